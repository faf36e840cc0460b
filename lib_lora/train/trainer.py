"""The training loop: sd-scripts' train_network.py behaviour on LoRA Studio's own SD model.

Randomness is drawn per sample from (seed, epoch, batch, position in the global batch) and per step from
(seed, step), never from a stream that runs through the whole run. So a run resumed from a saved state takes
exactly the steps the uninterrupted run takes, and N processes with per-device batch b take the same steps
as one process with batch N·b.

Under HF accelerate (`accelerate launch -m lib_lora train …`) the loss module runs as DistributedDataParallel
and only the main process writes files and logs.
"""

from __future__ import annotations

import hashlib
import math
import os
import random
import secrets
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from lib_lora import fileio
from lib_lora.errors import LoraStudioError
from lib_lora.train import dataset as D
from lib_lora.train import metadata as M
from lib_lora.train import optim as O
from lib_lora.train import samples as SP
from lib_lora.train import state as S
from lib_lora.train.config import TrainConfig
from lib_lora.train.network import TrainNetwork, build_network

SAVE_DTYPES = {"float": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16, None: None}
_TEXT_CACHE_MAX = 4096


def _seed_of(*parts) -> int:
    h = hashlib.blake2b("/".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") & ((1 << 63) - 1)


@dataclass
class Progress:
    step: int
    total: int
    epoch: int
    epochs: int
    loss: float
    lr: list
    elapsed: float
    eta: float | None


@dataclass
class TrainResult:
    files: list = field(default_factory=list)
    states: list = field(default_factory=list)
    steps: int = 0
    epochs_done: int = 0
    losses: list = field(default_factory=list)     # (step, loss) of every optimizer step on this process
    samples: list = field(default_factory=list)    # sample image paths
    keys_scaled: list = field(default_factory=list)   # scale_weight_norms: modules scaled at each step
    cancelled: bool = False
    log_path: str | None = None
    log_kind: str | None = None


# ---- noise / loss -----------------------------------------------------------------------------------------

def multires_noise(noise: torch.Tensor, iterations: int, discount: float, gen: torch.Generator) -> torch.Tensor:
    """sd-scripts' pyramid noise: add upsampled coarser noise (random scale 2–4 per level), then renormalise."""
    b, c, w, h = noise.shape
    up = nn.Upsample(size=(w, h), mode="bilinear")
    for i in range(iterations):
        r = torch.rand(1, generator=gen).item() * 2 + 2
        w2, h2 = max(1, int(w / (r ** i))), max(1, int(h / (r ** i)))
        noise = noise + up(torch.randn(b, c, w2, h2, generator=gen).to(noise)) * discount ** i
        if w2 == 1 or h2 == 1:
            break
    return noise / noise.std()


class LossModule(nn.Module):
    """One forward = the loss of one batch. The network is its only registered child (what DDP syncs); the
    frozen model is held outside the module tree."""

    def __init__(self, network: TrainNetwork, model, cfg: TrainConfig, alphas_cumprod: torch.Tensor):
        super().__init__()
        self.network = network
        self._model = [model]
        self.cfg = cfg
        self.register_buffer("acp", alphas_cumprod.float(), persistent=False)

    def forward(self, latents, context, y, noise, timesteps, weights):
        model = self._model[0]
        acp = self.acp[timesteps].view(-1, 1, 1, 1)
        sa, sb = acp.sqrt(), (1 - acp).sqrt()
        noisy = sa * latents + sb * noise
        with self._autocast(latents.device):
            pred = model.unet(noisy.to(self._dtype(model)), timesteps, context, y)
        target = sa * noise - sb * latents if self.cfg.v_parameterization else noise
        pred = pred.float()
        if self.cfg.loss_type == "l1":
            loss = (pred - target).abs()
        else:
            loss = (pred - target) ** 2
        loss = loss.mean(dim=(1, 2, 3)) * weights
        if self.cfg.min_snr_gamma:
            snr = acp.view(-1) / (1 - acp.view(-1))
            gamma = torch.minimum(snr, torch.full_like(snr, self.cfg.min_snr_gamma))
            loss = loss * (gamma / (snr + 1) if self.cfg.v_parameterization else gamma / snr)
        return loss.mean()

    @staticmethod
    def _dtype(model):
        p = next(model.unet.parameters())
        return p.dtype

    def _autocast(self, device):
        mp = self.cfg.mixed_precision
        if mp == "no":
            return torch.autocast(device_type=device.type, enabled=False)
        dtype = torch.bfloat16 if mp == "bf16" or device.type == "cpu" else torch.float16
        return torch.autocast(device_type=device.type, dtype=dtype)


# ---- the model's side ----------------------------------------------------------------------------------------

def model_layers(model) -> list:
    """(canonical layer name, module, is_te) of every Linear/Conv2d of the U-Net and the text encoders, named
    by the checkpoint key of its weight (so the names are the core's canonical layer names)."""
    from lib_lora.arch import canonical_layer_name, is_te_layer

    by_ptr = {}
    for key, t in model.state_dict().items():
        if key.endswith(".weight") and isinstance(t, torch.Tensor) and t.numel():
            by_ptr[(t.data_ptr(), tuple(t.shape))] = key[: -len(".weight")]
    out = []
    roots = [model.unet] + list(model.text_encoders or [])
    for root in roots:
        for _, m in root.named_modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                name = by_ptr.get((m.weight.data_ptr(), tuple(m.weight.shape)))
                if name is None:
                    continue
                layer = canonical_layer_name(name)
                out.append((layer, m, is_te_layer(layer)))
    return out


def model_host(model):
    """The core's Host over a lib_lora.sd model's layers (`model_layers`): what a Patcher puts LoRAs on for
    the epoch grid and the standalone merge preview."""
    from lib_lora.host import Host

    return Host.from_named_modules([(layer, m) for layer, m, _ in model_layers(model)], arch=model.arch)


def load_base_model(cfg: TrainConfig, device, dtype):
    try:
        from lib_lora.sd import load_model
    except ImportError:
        raise LoraStudioError("this build has no built-in SD model (lib_lora.sd) to load "
                              f"'{cfg.pretrained_model_name_or_path}'; train from the WebUI tab or update "
                              "LoRA Studio.") from None

    return load_model(cfg.pretrained_model_name_or_path, dtype=dtype)


class Trainer:
    """`Trainer(cfg).run()`; `model` may be given (the WebUI's or a test's), else the checkpoint is loaded.
    `progress(Progress)` is called after every optimizer step; `cancel()` returning True stops the run after
    the current step (files already written stay complete; nothing is left half-written)."""

    def __init__(self, cfg: TrainConfig, model=None, progress: Callable | None = None,
                 cancel: Callable | None = None, log: Callable = print, use_accelerate: bool | None = None):
        self.cfg = cfg
        self.model = model
        self.progress = progress
        self.cancel = cancel or (lambda: False)
        self.log = log
        self.use_accelerate = use_accelerate

    # -- setup --------------------------------------------------------------------------------------------
    def _accelerator(self):
        want = self.use_accelerate
        if want is None:
            want = int(os.environ.get("WORLD_SIZE", "1")) > 1 or "ACCELERATE_MIXED_PRECISION" in os.environ
        if not want:
            return None
        try:
            from accelerate import Accelerator
            from accelerate.utils import DistributedDataParallelKwargs
        except ImportError:
            if int(os.environ.get("WORLD_SIZE", "1")) > 1:
                raise LoraStudioError("this run was started with several processes but 'accelerate' is not "
                                      "installed; pip install accelerate.") from None
            return None
        kw = DistributedDataParallelKwargs(find_unused_parameters=bool(self._module_dropout()))
        return Accelerator(gradient_accumulation_steps=1, kwargs_handlers=[kw], cpu=not torch.cuda.is_available())

    def _module_dropout(self) -> float:
        from lib_lora.train.network import network_spec

        return network_spec(self.cfg).module_dropout

    def run(self) -> TrainResult:
        cfg = self.cfg
        acc = self._accelerator()
        world = acc.num_processes if acc else 1
        rank = acc.process_index if acc else 0
        main = rank == 0
        device = acc.device if acc else torch.device("cuda" if torch.cuda.is_available() else "cpu")
        say = self.log if main else (lambda *_a, **_k: None)

        report = D.validate(cfg, num_processes=world, check_model=self.model is None)
        report.raise_if_blocked()
        for w in report.warnings:
            say("warning: " + w)
        final = os.path.join(cfg.output_dir, f"{cfg.name}.safetensors")
        if main and os.path.exists(final):     # before any minute is spent: nothing is overwritten
            raise LoraStudioError(f"'{final}' exists; choose another output_name or move the file away.")
        prompts = SP.read_prompts(cfg.sample_prompts) if cfg.sample_prompts else []
        seed = cfg.seed if cfg.seed is not None else secrets.randbelow(1 << 31)
        if cfg.mixed_precision == "fp16" and device.type == "cpu":
            say("note: fp16 autocast is not available on the CPU; training in bf16 autocast.")

        # model
        weight_dtype = torch.float32
        if device.type == "cuda" and cfg.mixed_precision in ("fp16", "bf16"):
            weight_dtype = torch.float16 if cfg.mixed_precision == "fp16" else torch.bfloat16
        model = self.model
        if model is None:
            say(f"loading {cfg.pretrained_model_name_or_path}")
            model = load_base_model(cfg, device, weight_dtype)
        arch = model.arch
        if prompts:
            SP.check_model(model)
        if cfg.v2 or arch == "sd2":
            raise LoraStudioError("SD2 checkpoints are not supported by the built-in trainer yet; use an SD1.x or "
                                  "SDXL checkpoint.")
        for p in _all_params(model):
            p.requires_grad_(False)
        _to(model, device)
        if cfg.gradient_checkpointing:
            _enable_checkpointing(model, say)

        # network
        net = build_network(cfg, arch, model_layers(model), seed)
        if cfg.network_weights:
            tensors, _ = fileio.read_tensors(cfg.network_weights)
            net.load_weights(tensors)
        if cfg.scale_weight_norms:
            net.check_max_norm()
        net.to(device)
        net.apply_to()
        net.train()
        train_te = any(net.is_te.values())
        unet_lr = cfg.unet_lr if cfg.unet_lr is not None else cfg.learning_rate
        te_lr = cfg.text_encoder_lr if cfg.text_encoder_lr is not None else cfg.learning_rate
        groups = net.param_groups(unet_lr, te_lr)
        if not groups:
            raise LoraStudioError("nothing to train: both learning rates are 0 or no module was created.")
        opt_name = O.optimizer_name(cfg.optimizer_type)
        if opt_name in O.ADAPTIVE and len({g["lr"] for g in groups if g["name"].startswith("unet_block")}) > 1:
            # Prodigy/D-Adaptation refuse groups with different learning rates (sd-scripts stops at the first
            # step); the built-in trainer would otherwise give every block the same rate.
            raise LoraStudioError(f"{opt_name} takes one learning rate for all parameters, so down/mid/up_lr_weight "
                                  "cannot weight the blocks; remove them or choose AdamW, Lion or AdaFactor.")
        if opt_name in O.ADAPTIVE and any(g["name"].endswith(" plus") for g in groups):
            # the same reason: one rate would erase LoRA+'s ratio (sd-scripts 0.8 refused the pair too)
            raise LoraStudioError(f"{opt_name} takes one learning rate for all parameters, so LoRA+ "
                                  "(loraplus_*_ratio) cannot raise the up weights' rate; remove it or choose AdamW, "
                                  "Lion or AdaFactor.")
        opt, opt_desc, _relative = O.build_optimizer(cfg.optimizer_type, groups, cfg.optimizer_args,
                                                     cfg.learning_rate)

        # data and step count (per process; with one process exactly sd-scripts' numbers)
        datasets = report.datasets
        per_rank = [d.spec.batch_size for d in datasets]
        ga = cfg.gradient_accumulation_steps

        def epoch_plan(epoch: int) -> list:
            plan = []
            for di, ds in enumerate(datasets):
                for bi, b in enumerate(D.epoch_batches(ds, seed, epoch, per_rank[di], world, rank)):
                    plan.append((di, bi, b))
            random.Random(_seed_of(seed, "order", epoch)).shuffle(plan)
            return plan

        batches_per_epoch = len(epoch_plan(1))
        steps_per_epoch = math.ceil(batches_per_epoch / ga)
        if cfg.max_train_epochs is not None:
            total_steps = cfg.max_train_epochs * steps_per_epoch
        else:
            total_steps = cfg.max_train_steps
        epochs = math.ceil(total_steps / steps_per_epoch)
        warm = O.warmup_steps(cfg.lr_warmup_steps, total_steps)
        sched = O.Schedule(opt, cfg.lr_scheduler, total_steps, warm, cfg.lr_scheduler_num_cycles,
                           cfg.lr_scheduler_power)

        self._cache, self._disk_sha = {}, None
        if cfg.cache_latents_to_disk:
            self._prepare_disk_cache(model, datasets, device, main, acc if acc and world > 1 else None)
        loss_module = LossModule(net, model, cfg, _alphas_cumprod(model).to(device))
        step_module = acc.prepare(loss_module) if acc and world > 1 else loss_module

        # resume
        start_epoch, global_step, skip_batches = 0, 0, 0
        session_id = secrets.randbelow(1 << 31)
        started_at = time.time()
        if cfg.resume:
            info, tensors = S.load_state(cfg.resume)
            S.restore(net, opt, info, tensors)
            sched.load_state_dict(info["schedule"])
            start_epoch, global_step, skip_batches = info["epoch"], info["step"], info["batches_in_epoch"]
            seed = info["seed"]
            session_id = info.get("session_id", session_id)
            started_at = info.get("started_at", started_at)
            say(f"resumed from {cfg.resume}: epoch {start_epoch + 1}, step {global_step}")

        name = cfg.name
        out_dir = cfg.output_dir
        if main:
            os.makedirs(out_dir, exist_ok=True)
        metadata = M.training_metadata(cfg, report, net, opt_desc, seed, session_id, started_at, total_steps,
                                       epochs, batches_per_epoch, world, arch, te_lr, unet_lr, warm) if main else {}
        logger = _Logger(cfg, main)
        result = TrainResult(log_path=logger.path, log_kind=logger.kind)
        save_dtype = SAVE_DTYPES[cfg.save_precision]

        def save(fname: str, epoch_no: int) -> None:
            if not main:
                return
            md = dict(metadata)
            md["ss_training_finished_at"] = str(time.time())
            md["ss_steps"] = str(global_step)
            md["ss_epoch"] = str(epoch_no)
            if cfg.no_metadata:
                md = {k: md[k] for k in M.MINIMUM if k in md}
            md.update(M.modelspec(cfg, arch, name))
            tensors = net.weights(save_dtype)
            md.update(fileio.kohya_hashes(tensors, md))
            path = os.path.join(out_dir, fname)
            fileio.atomic_save_safetensors(tensors, path, md, overwrite=False)
            result.files.append(path)
            say(f"saved {path}")

        def save_run_state(folder_name: str, epoch: int, in_epoch: int) -> None:
            if not main:
                return
            folder = os.path.join(out_dir, folder_name)
            S.save_state(folder, net, opt, {"epoch": epoch, "step": global_step, "batches_in_epoch": in_epoch,
                                            "seed": seed, "session_id": session_id, "started_at": started_at,
                                            "schedule": sched.state_dict(), "total_steps": total_steps})
            result.states.append(folder)

        def sample(epoch_no: int | None) -> None:
            if prompts and SP.due(cfg, epoch_no, global_step):
                if main:
                    result.samples += SP.render(model, net, cfg, prompts, seed, epoch_no, global_step, say)
                if acc and world > 1:
                    acc.wait_for_everyone()

        if global_step == 0:
            sample(None)
        t0 = time.monotonic()
        step0 = global_step
        cancelled = False
        loss_acc, n_acc = 0.0, 0
        for epoch in range(start_epoch, epochs):
            plan = epoch_plan(epoch + 1)
            in_epoch = skip_batches if epoch == start_epoch else 0
            skip = in_epoch
            for bi_global, (di, bi, idx) in enumerate(plan):
                if bi_global < skip:
                    continue
                if global_step >= total_steps:
                    break
                ds = datasets[di]
                last_of_group = (bi_global + 1) % ga == 0 or bi_global + 1 == len(plan)
                # network dropouts (also in the text encoder, run inside _batch) draw from the global RNG
                torch.manual_seed(_seed_of(seed, "step", global_step, bi_global, rank))
                batch = self._batch(model, ds, idx, epoch + 1, bi, rank * per_rank[di], seed, global_step,
                                    total_steps, device, train_te)
                sync = acc.no_sync(step_module) if (acc and world > 1 and not last_of_group) else _null()
                with sync:
                    loss = step_module(*batch)
                    (loss / ga).backward()
                loss_acc += float(loss.detach())
                n_acc += 1
                in_epoch += 1
                if not last_of_group:
                    continue
                if cfg.max_grad_norm:
                    torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]],
                                                   cfg.max_grad_norm)
                opt.step()
                sched.step()
                opt.zero_grad(set_to_none=True)
                if cfg.scale_weight_norms:
                    keys_scaled, mean_norm, max_norm = net.apply_max_norm(cfg.scale_weight_norms)
                    result.keys_scaled.append(keys_scaled)
                    logger.scalars(global_step + 1, {"train/keys_scaled": keys_scaled,
                                                     "train/average_key_norm": mean_norm,
                                                     "train/max_key_norm": max_norm})
                global_step += 1
                step_loss = loss_acc / n_acc
                loss_acc, n_acc = 0.0, 0
                result.losses.append((global_step, step_loss))
                lrs = sched.last_lrs()
                logger.log(global_step, step_loss, lrs, [g.get("name", "") for g in opt.param_groups])
                if self.progress is not None and main:
                    el = time.monotonic() - t0
                    done = global_step - step0
                    eta = el / done * (total_steps - global_step) if done else None
                    self.progress(Progress(global_step, total_steps, epoch + 1, epochs, step_loss, lrs, el, eta))
                sample(None)
                if cfg.save_every_n_steps and global_step % cfg.save_every_n_steps == 0 and \
                        global_step < total_steps:
                    save(f"{name}-step{global_step:08d}.safetensors", epoch + 1)
                    if cfg.save_state:
                        save_run_state(f"{name}-step{global_step:08d}-state", epoch, in_epoch)
                if self._cancelled():
                    cancelled = True
                    break
            if cancelled:
                break
            result.epochs_done = epoch + 1
            sample(epoch + 1)
            last = epoch + 1 >= epochs or global_step >= total_steps
            if not last and cfg.save_every_n_epochs and (epoch + 1) % cfg.save_every_n_epochs == 0:
                save(f"{name}-{epoch + 1:06d}.safetensors", epoch + 1)
                if cfg.save_state:
                    save_run_state(f"{name}-{epoch + 1:06d}-state", epoch + 1, 0)
            if last:
                break
        result.steps = global_step
        result.cancelled = cancelled
        if acc and world > 1:
            acc.wait_for_everyone()
        if not cancelled:
            save(f"{name}.safetensors", result.epochs_done)
            if cfg.save_state or cfg.save_state_on_train_end:
                save_run_state(f"{name}-state", result.epochs_done, 0)
        else:
            say(f"stopped at step {global_step}; the files saved so far are complete.")
        logger.close()
        net.restore()
        return result

    def _cancelled(self) -> bool:
        try:
            return bool(self.cancel())
        except Exception:        # a broken cancel callback must not lose the run
            return False

    # -- one batch ---------------------------------------------------------------------------------------
    def _batch(self, model, ds: D.Dataset, idx: list, epoch: int, batch_index: int, pos0: int, seed: int,
               step: int, total: int, device, train_te: bool):
        cfg = self.cfg
        latents, captions, weights, sizes = [], [], [], []
        noises, ts = [], []
        lo = cfg.min_timestep or 0
        hi = cfg.max_timestep or 1000
        for j, i in enumerate(idx):
            item = ds.items[i]
            sseed = _seed_of(seed, epoch, batch_index, pos0 + j, ds.spec.resolution)
            rng = random.Random(sseed)
            flip = item.subset.flip_aug and rng.random() < 0.5
            latents.append(self._latent(model, item, flip, seed, rng, device))
            captions.append(D.process_caption(item.caption, item.subset, rng, epoch, step, total))
            weights.append(cfg.prior_loss_weight if item.subset.is_reg else 1.0)
            sizes.append(item)
            gen = torch.Generator().manual_seed(sseed)
            shape = latents[-1].shape
            noise = torch.randn(shape, generator=gen)
            if cfg.noise_offset:
                noise = noise + cfg.noise_offset * torch.randn((shape[0], 1, 1), generator=gen)
            if cfg.multires_noise_iterations:
                noise = multires_noise(noise.unsqueeze(0), cfg.multires_noise_iterations,
                                       cfg.multires_noise_discount, gen)[0]
            noises.append(noise)
            ts.append(int(torch.randint(lo, hi, (1,), generator=gen)))
        lat = torch.stack(latents).to(device)
        noise = torch.stack(noises).to(device)
        t = torch.tensor(ts, device=device, dtype=torch.long)
        w = torch.tensor(weights, device=device)
        context, y = self._encode_text(model, captions, sizes, train_te, device)
        return lat, context, y, noise, t, w

    def _latent(self, model, item, flip: bool, seed: int, rng, device):
        cache = getattr(self, "_cache", None)
        if cache is None:
            cache = self._cache = {}
        key = (item.path, item.bucket, flip)
        if key in cache:
            return cache[key]
        disk = getattr(self, "_disk_sha", None)
        if disk is not None:
            got = D.read_latent_cache(item, disk[item.path], item.subset.flip_aug)
            if got is None:
                raise LoraStudioError(f"the latent cache file '{D.cache_path(item)}' changed during training; "
                                      "start the run again (it rebuilds the cache).")
            lat = torch.from_numpy(got[flip]) * model.scale_factor
        else:
            img = D.load_image(item, flip, rng).unsqueeze(0).to(device)
            lat = _encode(model, img, _seed_of(seed, "vae", item.path, flip)) * model.scale_factor
        if self.cfg.cache_latents or self.cfg.cache_latents_to_disk:   # sd-scripts: to_disk implies cache_latents
            cache[key] = lat
        return lat

    def _prepare_disk_cache(self, model, datasets, device, main: bool, acc) -> None:
        """sd-scripts' cache_latents_to_disk: every image's .npz is checked (same image, same bucket) and the
        missing or stale ones are encoded before the first step. A cached latent is drawn from the VAE with a
        seed of the image's content, so it is the same whichever run made it."""
        sha, stale = {}, []
        for ds in datasets:
            for it in ds.items:
                if it.path in sha:
                    continue
                sha[it.path] = fileio.file_sha256(it.path)
                if D.read_latent_cache(it, sha[it.path], it.subset.flip_aug) is None:
                    stale.append(it)
        if main and stale:
            self.log(f"caching latents of {len(stale)} image(s) beside the images (.npz)")
            for it in stale:
                lats = {}
                for flip in ((False, True) if it.subset.flip_aug else (False,)):
                    img = D.load_image(it, flip).unsqueeze(0).to(device)
                    lats[flip] = _encode(model, img, _seed_of("vae-cache", sha[it.path], flip)).numpy()
                D.write_latent_cache(it, sha[it.path], lats)
        elif main:
            self.log(f"latent cache: all {len(sha)} image(s) reused")
        if acc is not None and acc.num_processes > 1:
            acc.wait_for_everyone()
        self._disk_sha = sha

    def _encode_text(self, model, captions, items, train_te: bool, device):
        cfg = self.cfg
        max_len = cfg.max_token_length or 75
        if train_te:
            context, pooled = model.encode_text(captions, clip_skip=cfg.clip_skip or 1, max_length=max_len)
        else:
            context, pooled = self._cached_text(model, captions, max_len)
        y = None
        if model.arch == "sdxl":
            sizes = [(it.size[1], it.size[0]) for it in items]
            crops = [(max(0, (it.resized[1] - it.bucket[1]) // 2), max(0, (it.resized[0] - it.bucket[0]) // 2))
                     for it in items]
            targets = [(it.bucket[1], it.bucket[0]) for it in items]
            y = model.sdxl_vector(pooled, sizes, crops, targets)
        return context, y

    def _cached_text(self, model, captions, max_len):
        """Frozen text encoders give the same output for the same caption: keep it (bounded), encode only
        new captions; exactly what encoding every step gives."""
        cache = getattr(self, "_text_cache", None)
        if cache is None or len(cache) > _TEXT_CACHE_MAX:
            cache = self._text_cache = {}
        new = [c for c in dict.fromkeys(captions) if c not in cache]
        if new:
            with torch.no_grad():
                ctx, pooled = model.encode_text(new, clip_skip=self.cfg.clip_skip or 1, max_length=max_len)
            for i, c in enumerate(new):
                cache[c] = (ctx[i], None if pooled is None else pooled[i])
        rows = [cache[c] for c in captions]
        context = torch.stack([r[0] for r in rows])
        pooled = None if rows[0][1] is None else torch.stack([r[1] for r in rows])
        return context, pooled

class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def _encode(model, img, eps_seed: int) -> torch.Tensor:
    """One image → its latent sample (C×H×W, float32, CPU), before the VAE scale factor."""
    with torch.no_grad():
        vdtype = next(model.vae.parameters()).dtype
        mean, logvar = model.vae.encode(img.to(vdtype))
        gen = torch.Generator().manual_seed(eps_seed)
        eps = torch.randn(mean.shape, generator=gen).to(mean)
        lat = mean + torch.exp(0.5 * logvar) * eps
    return lat[0].float().cpu()


def _all_params(model):
    seen = set()
    for part in [model.unet, model.vae] + list(model.text_encoders or []):
        for p in part.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                yield p


def _to(model, device) -> None:
    for part in [model.unet, model.vae] + list(model.text_encoders or []):
        part.to(device)
        part.eval()


def _alphas_cumprod(model) -> torch.Tensor:
    own = getattr(model, "alphas_cumprod", None)    # a model may bring its own noise schedule
    if own is not None:
        return torch.as_tensor(own)
    from lib_lora.sd import schedule

    return schedule.alphas_cumprod()


def _enable_checkpointing(model, say) -> None:
    fn = getattr(model.unet, "set_gradient_checkpointing", None) or getattr(model, "set_gradient_checkpointing",
                                                                            None)
    if fn is None:
        say("note: this model does not offer gradient checkpointing; training without it.")
        return
    fn(True)


class _Logger:
    """Loss and learning rates per step: TensorBoard event files when torch.utils.tensorboard works, else a
    CSV (`log.csv`). Only the main process logs."""

    def __init__(self, cfg: TrainConfig, main: bool):
        self.writer = None
        self.csv = None
        self.path = self.kind = None
        if not (cfg.logging_dir and main):
            return
        run = (cfg.log_prefix or "") + time.strftime("%Y%m%d%H%M%S")
        self.path = os.path.join(cfg.logging_dir, run)
        os.makedirs(self.path, exist_ok=True)
        try:
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(self.path)
            self.kind = "tensorboard"
        except Exception:            # tensorboard missing or broken: the CSV still records the run
            self.csv = open(os.path.join(self.path, "log.csv"), "w", encoding="utf-8")
            self.csv.write("step,loss,lrs\n")
            self.kind = "csv"

    def log(self, step: int, loss: float, lrs: list, names: list) -> None:
        if self.writer is not None:
            self.writer.add_scalar("loss/current", loss, step)
            for n, lr in zip(names, lrs):
                self.writer.add_scalar(f"lr/{n or 'group'}", lr, step)
        elif self.csv is not None:
            self.csv.write(f"{step},{loss!r},{' '.join(repr(x) for x in lrs)}\n")

    def scalars(self, step: int, values: dict) -> None:
        if self.writer is not None:
            for k, v in values.items():
                self.writer.add_scalar(k, v, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.csv is not None:
            self.csv.close()
