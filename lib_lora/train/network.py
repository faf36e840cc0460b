"""The trained network: lycoris-lora modules (LoRA/LoCon, LoHa, LoKr) wrapped around the model's layers and
saved under kohya key names (`lora_unet_…`, `lora_te_…`, `lora_te1_…`/`lora_te2_…`).

Which layers are trained and what each is called come from the core, so a saved file loads back through
`lib_lora.network.load_network` exactly as the merge tools' files do: the target rule and the layer → kohya
key map are `lib_lora.merge.extract`'s (kohya's choice of layers: transformer linears/1×1 projections of the
U-Net and the text encoders' attention/MLP; with a conv rank also the ResNet, down- and upsampler layers).
Ranks as sd-scripts: linear and 1×1 layers take network_dim/alpha, 3×3 convs conv_dim/conv_alpha; with
networks.lora's per-block arguments (block_dims & co., down/mid/up_lr_weight) the U-Net's ranks and learning-rate
weights go by sd-scripts' block index (`block_plan`, SD1 and SDXL).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass

import torch
from torch import nn

from lib_lora.errors import LoraStudioError
from lib_lora.merge.extract import is_target, kohya_names  # noqa: F401  one home for the layer → kohya key map
from lib_lora.train.config import LYCORIS_ALGOS, TrainConfig, parse_kv_args

_BOOL_ARGS = ("use_tucker", "use_scalar", "rank_dropout_scale", "dora_wd", "wd_on_output", "rs_lora",
              "full_matrix", "unbalanced_factorization", "bypass_mode")
# LoRA+ (sd-scripts networks/lora.py and LyCORIS' kohya.py read the same three network_args; sd-scripts 0.8.x also
# took them as top-level arguments, TrainConfig's fields of the same names)
LORAPLUS_ARGS = ("loraplus_lr_ratio", "loraplus_unet_lr_ratio", "loraplus_text_encoder_lr_ratio")
_KNOWN_ARGS = {
    "networks.lora": {"conv_dim", "conv_alpha", "rank_dropout", "module_dropout", "down_lr_weight", "mid_lr_weight",
                      "up_lr_weight", "block_lr_zero_threshold", "block_dims", "block_alphas", "conv_block_dims",
                      "conv_block_alphas", *LORAPLUS_ARGS},
    "lycoris.kohya": {"algo", "conv_dim", "conv_alpha", "dropout", "rank_dropout", "module_dropout", "preset",
                      "factor", "decompose_both", "block_size", *_BOOL_ARGS, *LORAPLUS_ARGS},
}


@dataclass
class NetworkSpec:
    module: str
    algo: str                  # lora | loha | lokr
    dim: int
    alpha: float
    conv_dim: int              # 0: 3×3 convs not trained
    conv_alpha: float
    dropout: float
    rank_dropout: float
    module_dropout: float
    extra: dict                # LyCORIS keyword arguments (factor, use_tucker, dora_wd, …)
    args: dict                 # network_args as given (for ss_network_args)
    conv_targets: bool = False       # networks.lora: conv_dim given (even 0) also trains ResNet linears/1×1
    loraplus: dict | None = None     # LORAPLUS_ARGS name → ratio (those given), None without LoRA+

    def loraplus_ratio(self, is_te: bool) -> float | None:
        """The part's LoRA+ ratio as sd-scripts picks it: its own ratio, else the common one (Python `or`: a
        ratio of 0 also falls back)."""
        lp = self.loraplus or {}
        own = lp.get("loraplus_text_encoder_lr_ratio" if is_te else "loraplus_unet_lr_ratio")
        return own or lp.get("loraplus_lr_ratio")


def _str_bool(v: str) -> bool:
    return str(v).strip().lower() not in ("false", "0", "no", "")


def network_spec(cfg: TrainConfig) -> NetworkSpec:
    """network_module + network_dim/alpha/dropout + network_args → what to build; unknown args are an error."""
    args = parse_kv_args(cfg.network_args, "network_args")
    known = _KNOWN_ARGS[cfg.network_module]
    unknown = sorted(set(args) - known)
    if unknown:
        raise LoraStudioError(f"network_args {', '.join(unknown)} are not supported with {cfg.network_module}; "
                              f"supported: {', '.join(sorted(known))}.")
    dim = cfg.network_dim or 4
    alpha = cfg.network_alpha
    try:
        if cfg.network_module == "networks.lora":
            conv_dim = int(args["conv_dim"]) if "conv_dim" in args else 0
            conv_alpha = float(args.get("conv_alpha", 1.0)) if conv_dim else 1.0
            algo = "lora"
            dropout = cfg.network_dropout or 0.0
            extra = {}
        else:
            algo = args.get("algo", "lora").lower()
            if algo == "locon":
                algo = "lora"
            if algo not in LYCORIS_ALGOS:
                raise LoraStudioError(f"network_args algo={algo} is not supported; use lora (LoCon), loha or lokr.")
            preset = args.get("preset", "full")
            if preset not in ("full", "attn-mlp", "attn-only"):
                raise LoraStudioError(f"network_args preset={preset} is not supported; use full, attn-mlp or "
                                      "attn-only.")
            conv_dim = int(args.get("conv_dim", dim)) if preset == "full" else 0
            conv_alpha = float(args.get("conv_alpha", alpha))
            dropout = float(args.get("dropout", cfg.network_dropout or 0.0))
            extra = {}
            for k in _BOOL_ARGS:
                if k in args:
                    extra[k] = _str_bool(args[k])
            if "dora_wd" in extra:
                extra["weight_decompose"] = extra.pop("dora_wd")
            if "wd_on_output" in extra:
                extra["wd_on_out"] = extra.pop("wd_on_output")
            if "factor" in args:
                extra["factor"] = int(args["factor"])
            if "decompose_both" in args:      # LyCORIS passes the text through: any non-empty value enables it
                extra["decompose_both"] = bool(args["decompose_both"])
            if "block_size" in args:
                extra["block_size"] = int(args["block_size"])
        rank_dropout = float(args.get("rank_dropout", 0.0))
        module_dropout = float(args.get("module_dropout", 0.0))
    except ValueError as exc:
        raise LoraStudioError(f"network_args: a value is not a number ({exc}); write e.g. conv_dim=8.") from None
    conv_targets = conv_dim > 0 or (cfg.network_module == "networks.lora" and "conv_dim" in args)
    return NetworkSpec(cfg.network_module, algo, dim, alpha, conv_dim, conv_alpha, dropout, rank_dropout,
                       module_dropout, extra, args, conv_targets, _loraplus(cfg, args))


def _loraplus(cfg: TrainConfig, args: dict) -> dict | None:
    """The LoRA+ ratios of network_args and of the top-level keys (one value per name: the two spellings must
    agree when both are given)."""
    out = {}
    for k in LORAPLUS_ARGS:
        top = getattr(cfg, k, None)
        if k in args:
            try:
                v = float(args[k])
            except ValueError:
                raise LoraStudioError(f"network_args {k}={args[k]} is not a number; write e.g. {k}=16.") from None
            if v < 0:
                raise LoraStudioError(f"network_args {k}={args[k]} is negative; give a ratio ≥ 0 (16 in the paper).")
            if top is not None and float(top) != v:
                raise LoraStudioError(f"{k} is {top:g} but network_args says {k}={args[k]}; keep one of them.")
            out[k] = v
        elif top is not None:
            if cfg.network_module == "lycoris.kohya":
                # sd-scripts passed the top-level ratios to networks.lora only; LyCORIS reads network_args
                raise LoraStudioError(f"lycoris.kohya takes LoRA+ from network_args only; write "
                                      f"network_args = [\"{k}={top:g}\"] instead of {k} = {top:g}.")
            out[k] = float(top)
    return out or None


# ---- per-block settings (sd-scripts networks.lora: down/mid/up_lr_weight, block_dims/alphas, conv_block_*) ----
# sd-scripts numbers the U-Net's blocks per architecture (the index every per-block list is read by):
#   SD1 (and SD2), 25 blocks: IN00-IN11 → 0-11 (IN00 is conv_in: no module), MID → 12, OUT00-OUT11 → 13-24;
#       down/up LR weights have 12 entries each and mid 1, concatenated as they are.
#   SDXL, 23 blocks: 0 time/label embedding, IN00-IN08 → 1-9, MID 0-2 → 10-12 (ResNet, transformer, ResNet),
#       OUT00-OUT08 → 13-21, 22 out; down/up LR weights have 9 entries each and mid 3, and blocks 0 and 22 (no
#       modules) take weight 1.
LR_PRESETS = ("cosine", "sine", "linear", "reverse_linear", "zeros")
BLOCK_ARGS = ("block_dims", "block_alphas", "conv_block_dims", "conv_block_alphas")
_LR_ARGS = ("down_lr_weight", "mid_lr_weight", "up_lr_weight")
_BLOCK_RE = re.compile(r"(?:^|\.)(input_blocks|middle_block|output_blocks)\.(\d+)\.")
_SDXL_EDGE_RE = re.compile(r"(?:^|\.)(time_embed|label_emb|out)\.")


@dataclass(frozen=True)
class BlockLayout:
    updown: int         # entries of down_lr_weight / up_lr_weight
    mid: int            # entries of mid_lr_weight
    total: int          # entries of block_dims & co.
    sdxl: bool


def block_layout(arch: str) -> BlockLayout:
    return BlockLayout(9, 3, 23, True) if arch == "sdxl" else BlockLayout(12, 1, 25, False)


def block_index(layer: str, arch: str = "sd1") -> int:
    """sd-scripts' block index of a U-Net layer (see the table above); -1 for layers outside the blocks."""
    m = _BLOCK_RE.search(layer)
    if arch == "sdxl":
        if m:
            n = int(m.group(2))
            return {"input_blocks": 1, "middle_block": 10, "output_blocks": 13}[m.group(1)] + n
        e = _SDXL_EDGE_RE.search(layer)
        if e and layer.startswith("model.diffusion_model."):
            return 22 if e.group(1) == "out" else 0
        return -1
    if not m:
        return -1
    kind, n = m.group(1), int(m.group(2))
    return n if kind == "input_blocks" else 12 if kind == "middle_block" else 13 + n


def _numbers(text: str, key: str, kind=float, empty=None) -> list:
    """sd-scripts' comma lists (in LR weight lists an empty item counts as 0: `empty`)."""
    try:
        return [empty if empty is not None and not v.strip() else kind(v) for v in text.split(",")]
    except ValueError:
        what = "whole numbers (ranks)" if kind is int else "numbers"
        raise LoraStudioError(f"network_args {key}={text} must be comma-separated {what}; write e.g. "
                              f"{key}=" + ("4,4,8" if kind is int else "1,0.5,0.5") + ".") from None


def _lr_curve(text: str, key: str, n: int) -> list[float]:
    """A comma list, or a preset curve over the n down/up blocks with an optional "+base" (sd-scripts reads a
    value without a comma as a curve name)."""
    if "," in text:
        return _numbers(text, key, empty=0.0)
    name, plus, base = text.partition("+")
    name = name.strip()
    if name not in LR_PRESETS:
        raise LoraStudioError(f"network_args {key}={text} is not a curve name (sd-scripts reads a value without a "
                              "comma as one and ignores unknown names); write comma-separated weights such as "
                              f"1,0.5,… or one of {', '.join(LR_PRESETS)} (optionally +base).")
    try:
        b = float(base) if plus else 0.0
    except ValueError:
        raise LoraStudioError(f"network_args {key}={text}: the part after + must be a number; write e.g. "
                              f"{name}+0.5.") from None
    steps = [i / (n - 1) for i in range(n)]
    curve = {"sine": [math.sin(math.pi * t / 2) for t in steps], "linear": steps, "zeros": [0.0] * n}
    curve["cosine"] = curve["sine"][::-1]
    curve["reverse_linear"] = steps[::-1]
    return [v + b for v in curve[name]]


def block_lr_weights(args: dict, arch: str = "sd1") -> list[float] | None:
    """The LR weight of every block (block_layout(arch).total entries), or None without down/mid/up_lr_weight.
    sd-scripts' rules: down/up lists are cut or padded with 1 to `updown` entries, mid to `mid`; a weight at or
    below block_lr_zero_threshold becomes 0 (and its block gets no module)."""
    if not any(k in args for k in _LR_ARGS):
        return None
    lay = block_layout(arch)
    try:
        zero = float(args.get("block_lr_zero_threshold", 0.0))
    except ValueError:
        raise LoraStudioError("network_args block_lr_zero_threshold takes one number; write e.g. "
                              "block_lr_zero_threshold=0.1.") from None

    def part(key, n, curve):
        if key not in args:
            return [1.0] * n
        w = (_lr_curve(args[key], key, lay.updown) if curve else _numbers(args[key], key, empty=0.0)) + [1.0] * n
        return [x if x > zero else 0.0 for x in w[:n]]

    out = part("down_lr_weight", lay.updown, True) + part("mid_lr_weight", lay.mid, False) + \
        part("up_lr_weight", lay.updown, True)
    return [1.0, *out, 1.0] if lay.sdxl else out


@dataclass
class BlockPlan:
    """Per-block ranks and LR weights of the U-Net, indexed by block_index (sd-scripts' create_network)."""
    arch: str
    lr: list[float] | None              # None: one U-Net optimizer group
    dims: list[int]
    alphas: list[float]
    conv_dims: list[int] | None         # None: 3×3 convs not trained
    conv_alphas: list[float] | None

    def rank(self, layer: str, conv3: bool) -> tuple[int, float]:
        i = block_index(layer, self.arch)
        if conv3:
            return (0, 1.0) if self.conv_dims is None else (self.conv_dims[i], self.conv_alphas[i])
        return self.dims[i], self.alphas[i]


def _conv_alpha(args: dict) -> float:
    try:
        return float(args.get("conv_alpha", 1.0))
    except ValueError:
        raise LoraStudioError(f"network_args conv_alpha={args['conv_alpha']} is not a number; write e.g. "
                              "conv_alpha=1.") from None


def block_plan(spec: NetworkSpec, arch: str) -> BlockPlan | None:
    """sd-scripts' rule: block mode is on when block_dims or an LR weight is given; then block_alphas default to
    network_alpha, conv_block_dims to conv_dim (none: no 3×3 convs), conv_block_alphas to conv_alpha, and a block
    with LR weight 0 gets rank 0. The block lists must have one entry per block."""
    args = spec.args
    lr = block_lr_weights(args, arch)
    given = [k for k in BLOCK_ARGS if k in args]
    if "block_dims" not in args and lr is None:
        if given:
            raise LoraStudioError(f"network_args {', '.join(given)} take effect only with block_dims or a "
                                  "down/mid/up_lr_weight (sd-scripts ignores them otherwise); add block_dims=… or "
                                  "remove them.")
        return None
    lay = block_layout(arch)
    lists = {}
    for k in given:
        lists[k] = _numbers(args[k], k, int if k.endswith("dims") else float)
        if len(lists[k]) != lay.total:
            raise LoraStudioError(f"network_args {k} has {len(lists[k])} values; {'SDXL' if lay.sdxl else 'SD1'} "
                                  f"takes {lay.total} (one per U-Net block); write {lay.total} comma-separated "
                                  "values.")
    dims = lists.get("block_dims", [spec.dim] * lay.total)
    alphas = lists.get("block_alphas", [spec.alpha] * lay.total)
    if "conv_block_dims" in lists:
        conv_dims = lists["conv_block_dims"]
        conv_alphas = lists.get("conv_block_alphas", [_conv_alpha(args)] * lay.total)
    elif "conv_dim" in args:
        conv_dims, conv_alphas = [spec.conv_dim] * lay.total, [spec.conv_alpha] * lay.total
    else:
        conv_dims = conv_alphas = None
    if lr is not None:
        dims = [0 if w == 0 else d for d, w in zip(dims, lr)]
        if conv_dims is not None:
            conv_dims = [0 if w == 0 else d for d, w in zip(conv_dims, lr)]
    return BlockPlan(arch, lr, dims, alphas, conv_dims, conv_alphas)


# ---- sd-scripts' module order (networks/lora.py creates modules walking its own models' module trees) ----------

_TE_ORDER = ("self_attn_k_proj", "self_attn_v_proj", "self_attn_q_proj", "self_attn_out_proj", "mlp_fc1", "mlp_fc2")
_TRANSFORMER_ORDER = ("attn1_to_q", "attn1_to_k", "attn1_to_v", "attn1_to_out_0", "ff_net_0_proj", "ff_net_2",
                      "attn2_to_q", "attn2_to_k", "attn2_to_v", "attn2_to_out_0")
_RESNET_ORDER = ("conv1", "time_emb_proj", "conv2", "conv_shortcut",                       # SD1 (diffusers names)
                 "in_layers_2", "emb_layers_1", "out_layers_3", "skip_connection")         # SDXL (LDM names)
# SD1: sd-scripts' U-Net registers up_blocks before it assigns mid_block, so its tree walk visits down, up, mid;
# inside a block: every attention, then every ResNet, then the sampler. SDXL's is LDM order: input, middle, output.
_SECTION = {"down_blocks": 0, "up_blocks": 1, "mid_block": 2, "input_blocks": 0, "middle_block": 1,
            "output_blocks": 2}
_PART = {"attentions": 0, "resnets": 1, "downsamplers": 2, "upsamplers": 2}
_SD1_KEY = re.compile(r"lora_unet_(down_blocks|up_blocks|mid_block)_(?:(\d+)_)?(attentions|resnets|downsamplers|"
                      r"upsamplers)_(\d+)_(.*)$")
_SDXL_KEY = re.compile(r"lora_unet_(input_blocks|middle_block|output_blocks)_(?:(\d+)_)?(\d+)_(.*)$")


def _inner(rest: str) -> tuple:
    """Order inside one attention (proj_in, each transformer block, proj_out) or ResNet/sampler module."""
    if rest == "proj_in":
        return (0,)
    if rest == "proj_out":
        return (2,)
    m = re.match(r"transformer_blocks_(\d+)_(.*)$", rest)
    if m:
        tail = m.group(2)
        return (1, int(m.group(1)), _TRANSFORMER_ORDER.index(tail) if tail in _TRANSFORMER_ORDER else 99, tail)
    return (3, _RESNET_ORDER.index(rest) if rest in _RESNET_ORDER else 99, rest)


def sd_scripts_order(key: str) -> tuple:
    """A sort key putting kohya module keys in the order sd-scripts' networks/lora.py creates the modules (text
    encoder(s) layer by layer, k/v/q/out then the MLP; the U-Net as its tree walk visits it), which is the order
    its optimizer groups list the parameters in (checked against tests/fixtures/sdscripts_lora_order.json)."""
    m = re.match(r"lora_te(\d?)_text_model_encoder_layers_(\d+)_(.*)$", key)
    if m:
        tail = m.group(3)
        return (0, int(m.group(1) or 1), int(m.group(2)), _TE_ORDER.index(tail) if tail in _TE_ORDER else 99, tail)
    m = _SD1_KEY.match(key)
    if m:
        section, block, part, j, rest = m.groups()
        return (1, _SECTION[section], int(block or 0), _PART[part], int(j), _inner(rest))
    m = _SDXL_KEY.match(key)        # <section>_<n>_<m>_…, middle_block_<m>_…: m is the place inside LDM block n
    if m:
        section, n, place, rest = m.groups()
        return (1, _SECTION[section], int(n or 0), 0, int(place), _inner(rest))
    return (2, key)


def _lycoris_class(algo: str):
    from lycoris.modules import LoConModule, LohaModule, LokrModule

    return {"lora": LoConModule, "loha": LohaModule, "lokr": LokrModule}[algo]


class TrainNetwork(nn.Module):
    """LyCORIS modules keyed by kohya module key; `apply_to()` hooks them into the model's layers."""

    def __init__(self, spec: NetworkSpec, arch: str, plan: BlockPlan | None = None):
        super().__init__()
        self.spec = spec
        self.arch = arch
        self.plan = plan
        self.loras = nn.ModuleDict()       # kohya key with '.' never appears in kohya keys
        self.is_te: dict[str, bool] = {}
        self.layer_of: dict[str, str] = {}

    def rank_of(self, layer: str, module: nn.Module, is_te: bool) -> tuple[int, float]:
        """(rank, alpha) of a layer's module; rank 0: the layer gets none."""
        sp = self.spec
        conv3 = isinstance(module, nn.Conv2d) and module.kernel_size != (1, 1)
        if self.plan is not None and not is_te and block_index(layer, self.arch) >= 0:
            return self.plan.rank(layer, conv3)
        return (sp.conv_dim, sp.conv_alpha) if conv3 else (sp.dim, sp.alpha)

    def add(self, key: str, layer: str, module: nn.Module, is_te: bool, dim: int, alpha: float) -> None:
        sp = self.spec
        kwargs = dict(sp.extra)
        if sp.algo == "lora" and not kwargs.get("weight_decompose"):
            kwargs.setdefault("bypass_mode", True)      # x → down → up: no dense ΔW per step
        cls = _lycoris_class(sp.algo)
        lyco = cls(key, module, 1.0, dim, alpha, sp.dropout, sp.rank_dropout, sp.module_dropout, **kwargs)
        self.loras[key] = lyco
        self.is_te[key] = is_te
        self.layer_of[key] = layer

    def apply_to(self) -> None:
        """Hook every module in. Plain LoRA/LoCon without rank/module dropout, Tucker, DoRA or scalar runs a
        lean x → down → up forward on the LyCORIS module's own weights (its generic forward re-dispatches a
        kernel backend per call, which is most of the loop's overhead on small layers); the rest use LyCORIS'
        forward."""
        self._hooked = []
        for key, m in self.loras.items():
            org = m.org_module[0]
            if self._lean(m):
                m.org_forward = org.forward
                org.forward = _lean_forward(m, org.forward, self.spec.module == "networks.lora")
                self._hooked.append(org)
            else:
                m.apply_to()

    def _lean(self, m) -> bool:
        from lycoris.modules import LoConModule

        return (type(m) is LoConModule and not m.tucker and not m.wd and not self.spec.rank_dropout
                and not self.spec.module_dropout and not self.spec.extra.get("use_scalar")
                and not self.spec.extra.get("rs_lora"))

    def restore(self) -> None:
        for org in getattr(self, "_hooked", []):
            org.__dict__.pop("forward", None)       # back to the class's own forward
        self._hooked = []
        for m in self.loras.values():
            if not self._lean(m):
                m.restore()

    def param_groups(self, unet_lr, te_lr) -> list[dict]:
        """The optimizer's groups as sd-scripts' networks/lora.py prepare_optimizer_params builds them, so a saved
        optimizer state lines up: the text encoder(s), then the U-Net, each module's parameters in the order
        sd-scripts creates the modules (`sd_scripts_order`); with per-block LR weights one U-Net group per
        block, in the order the blocks first appear there (SD1: down, up, then mid), lr = unet_lr × the block's
        weight. With LoRA+ each group splits into its down/other weights at lr and its up (B, `lora_up`)
        weights at lr × ratio, named "<part> plus". A group with learning rate 0 is dropped, as sd-scripts
        drops it."""
        groups = []
        block_lr = self.plan.lr if self.plan is not None else None
        for is_te, lr in ((True, te_lr), (False, unet_lr)):
            ratio = self.spec.loraplus_ratio(is_te)
            parts: dict = {}            # filled in sd-scripts' module order, so parts come in its order too
            for k in sorted((k for k in self.loras if self.is_te[k] == is_te), key=sd_scripts_order):
                part = block_index(self.layer_of[k], self.arch) if (block_lr is not None and not is_te) else None
                plain, plus = parts.setdefault(part, ([], []))
                for name, p in self.loras[k].named_parameters():
                    if p.requires_grad:
                        (plus if ratio is not None and "lora_up" in name else plain).append(p)
            for part, (plain, plus) in parts.items():
                weight = block_lr[part] if part is not None else 1.0
                name = "textencoder" if is_te else ("unet" if part is None else f"unet_block{part}")
                for params, scale, suffix in ((plain, 1.0, ""), (plus, ratio, " plus")):
                    if params and lr * weight * (scale or 0.0):
                        groups.append({"params": params, "lr": lr * weight * scale, "name": name + suffix})
        return groups

    def weights(self, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
        """kohya-named tensors as a file stores them (alpha kept fp32 only when the file is fp32)."""
        out = {}
        for key, m in self.loras.items():
            for suffix, t in m.custom_state_dict().items():
                t = t.detach()
                if dtype is not None and t.is_floating_point():
                    t = t.to(dtype)
                out[f"{key}.{suffix}"] = t.cpu().contiguous()
        return out

    def load_weights(self, tensors: dict[str, torch.Tensor]) -> None:
        own = self.weights()
        missing = sorted(set(own) - set(tensors))
        if missing:
            raise LoraStudioError(f"the weights file lacks {len(missing)} module tensors (e.g. {missing[0]}); it was "
                                  "made with other network settings.")
        with torch.no_grad():
            for key, m in self.loras.items():
                for suffix in list(m.custom_state_dict()):
                    src = tensors[f"{key}.{suffix}"]
                    if suffix == "alpha":
                        continue
                    name = suffix[:-len(".weight")] if suffix.endswith(".weight") else suffix
                    target = getattr(m, name)
                    target = target.weight if isinstance(target, nn.Module) else target
                    target.copy_(src.to(target.dtype))

    def check_max_norm(self) -> None:
        from lycoris.modules import LoConModule

        if any(type(m) is not LoConModule or m.tucker for m in self.loras.values()):
            raise LoraStudioError("scale_weight_norms works on LoRA/LoCon modules (down/up pairs); remove it for "
                                  "LoHa, LoKr or use_tucker.")

    @torch.no_grad()
    def apply_max_norm(self, max_norm: float) -> tuple[int, float, float]:
        """sd-scripts' scale_weight_norms after a step: every module whose ΔW = up·down·alpha/dim has a
        Frobenius norm above `max_norm` gets up and down scaled by √(max_norm/‖ΔW‖). Returns (keys scaled,
        mean norm, max norm) after scaling."""
        scaled, norms = 0, []
        for m in self.loras.values():
            down, up = m.lora_down.weight, m.lora_up.weight
            if down.dim() == 4 and down.shape[2:] != (1, 1):
                updown = nn.functional.conv2d(down.permute(1, 0, 2, 3), up).permute(1, 0, 2, 3)
            else:
                updown = up.flatten(1) @ down.flatten(1)
            updown = updown * float(m.scale)
            norm = updown.norm().clamp(min=max_norm / 2)
            ratio = float(norm.clamp(max=max_norm) / norm)
            if ratio != 1:
                scaled += 1
                down.mul_(ratio ** 0.5)
                up.mul_(ratio ** 0.5)
            norms.append(float(updown.norm()) * ratio)
        return scaled, sum(norms) / max(1, len(norms)), max(norms, default=0.0)

    def metadata_args(self) -> str:
        return json.dumps(self.spec.args)


def _lean_forward(m, org_forward, kohya_dropout: bool):
    """org(x) + up(down(x))·alpha/dim·multiplier; dropout where each network type puts it (sd-scripts'
    networks.lora on the rank activations, LyCORIS on the module output).

    Per call this is on the hot path (every hooked layer, forward and backward, each step), so it skips what
    cannot change a bit: down/up run their own `forward` (the module-call dispatch only serves hooks, and
    nothing hooks these), and a factor of exactly 1 (alpha = dim, multiplier 1) is not multiplied in — x·1.0
    is x in IEEE arithmetic, and so is the gradient's ·1.0 in the backward."""
    down, up = m.lora_down.forward, m.lora_up.forward
    drop = nn.functional.dropout
    p = m.dropout.p if isinstance(m.dropout, nn.Dropout) else 0.0

    def forward(x, *args, **kwargs):
        h = down(x)
        if kohya_dropout and p and m.training:
            h = drop(h, p)
        out = up(h)
        factor = m.scale * m.multiplier
        if factor != 1.0:
            out = out * factor
        if not kohya_dropout and p and m.training:
            out = drop(out, p)
        return org_forward(x, *args, **kwargs) + out
    return forward


def build_network(cfg: TrainConfig, arch: str, layers, seed: int) -> TrainNetwork:
    """`layers`: (canonical layer name, nn.Module, is_te) of the model. The modules are created under a fixed
    seed, so a run's initial weights depend only on its seed."""
    spec = network_spec(cfg)
    plan = block_plan(spec, arch) if spec.module == "networks.lora" else None
    conv = spec.conv_targets or (plan is not None and plan.conv_dims is not None)
    names = kohya_names(arch)
    net = TrainNetwork(spec, arch, plan)
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        for layer, module, is_te in layers:
            if is_te and cfg.network_train_unet_only or not is_te and cfg.network_train_text_encoder_only:
                continue
            if not isinstance(module, (nn.Linear, nn.Conv2d)):
                continue
            if not is_target(layer, tuple(module.weight.shape), conv=conv):
                continue
            if spec.module == "lycoris.kohya" and spec.args.get("preset") == "attn-only" and \
                    (".ff." in layer or ".mlp." in layer):
                continue
            key = names.get((layer, None))
            if key is None:
                continue
            dim, alpha = net.rank_of(layer, module, is_te)
            if not dim:
                continue        # sd-scripts: rank 0 (also every block with LR weight 0) gets no module
            net.add(key, layer, module, is_te, dim, alpha)
    finally:
        torch.random.set_rng_state(state)
    if not len(net.loras):
        raise LoraStudioError("no layer of the model matches the network settings; check network_args and "
                              "network_train_*_only.")
    return net
