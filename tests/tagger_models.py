"""Small WD14-style ONNX taggers built with the `onnx` helper API, for tests.

Both models compute the same pixel-dependent scores from a BGR, 0–255, NHWC input:
features = [mean B, mean G, mean R, corner B, corner G, corner R] / 255 (corner = top-left 4x4 block),
probabilities = sigmoid(features @ W + b). So an RGB/BGR swap turns "red theme" into "blue theme", black
padding turns "white background" into "black background", and ignoring alpha changes both.

- v3 style: input `input` ['batch_size', S, S, 3], output `output` ['batch_size', T], declares ai.onnx.ml 4.
- v2 style: input `input_1:0` [1, S, S, 3], output `predictions_sigmoid` [1, T], with a Reshape tied to
  batch 1 inside the graph (as the Keras exports), so feeding a larger batch fails.
- Z3D-E621: the v2 graph with `tags-selected.csv` holding only a `name` column.
- DeepDanbooru: input RGB 0–1 (the graph scales by 255 and swaps to BGR first, so the same image gives the
  same scores only when the pixels were prepared as DeepDanbooru wants), labels in `tags.txt` (ratings as
  `rating:*`) plus `tags-character.txt`.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

SIZE = 32
CORNER = 4

# (tag_id, name, category, weights over [mB, mG, mR, cB, cG, cR], bias)
ROWS = [
    (9999999, "general", 9, [8 / 3, 8 / 3, 8 / 3, 0, 0, 0], -4.0),
    (9999998, "sensitive", 9, [0, 0, 8, 0, 0, 0], -4.0),
    (9999997, "questionable", 9, [0, 0, 0, 0, 0, 0], -3.0),
    (9999996, "explicit", 9, [-8 / 3, -8 / 3, -8 / 3, 0, 0, 0], 4.0),
    (1, "blue_theme", 0, [12, -6, -6, 0, 0, 0], -2.0),
    (2, "red_theme", 0, [-6, -6, 12, 0, 0, 0], -2.0),
    (3, "green_theme", 0, [-6, 12, -6, 0, 0, 0], -2.0),
    (4, "white_background", 0, [0, 0, 0, 4, 4, 4], -9.0),
    (5, "black_background", 0, [0, 0, 0, -4, -4, -4], 9.0),
    (6, "^_^", 0, [0, 0, 0, 0, 0, 0], 1.0),
    (7, 'don\'t_say_"lazy"', 0, [0, 0, 0, 0, 0, 0], 0.5),
    (8, "long_hair", 0, [0, 0, 0, 0, 0, 0], -0.2),
    (9, "simple_background", 0, [0, 0, 0, 0, 0, 0], -3.0),
    (10, "(o)_(o)", 0, [0, 0, 0, 0, 0, 0], 0.1),
    (11, "hatsune_miku", 4, [12, 12, -12, 0, 0, 0], -14.0),
    (12, "kirisame_marisa_(touhou)", 4, [-12, 12, 12, 0, 0, 0], -14.0),
]
NAMES = [r[1] for r in ROWS]


def write_csv(path) -> Path:
    path = Path(path)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)  # quotes `don't_say_"lazy"` with doubled quotes, as the real v3 file
        w.writerow(["tag_id", "name", "category", "count"])
        for i, (tid, name, cat, _, _) in enumerate(ROWS):
            w.writerow([tid, name, cat, 100000 - i])
    return path


def weights():
    W = np.array([r[3] for r in ROWS], dtype=np.float32).T  # [6, T]
    b = np.array([r[4] for r in ROWS], dtype=np.float32)
    return W, b


def reference_probs(bgr: np.ndarray) -> np.ndarray:
    """What the graph computes, in numpy ([N, S, S, 3] BGR 0–255 → [N, T])."""
    m = bgr.mean(axis=(1, 2))
    c = bgr[:, :CORNER, :CORNER, :].mean(axis=(1, 2))
    f = np.concatenate([m, c], axis=1) / 255.0
    W, b = weights()
    return 1 / (1 + np.exp(-(f @ W + b)))


def _graph(in_name, out_name, batch, fixed_batch_reshape, rgb_unit=False):
    from onnx import TensorProto, helper, numpy_helper

    W, b = weights()
    T = len(ROWS)
    pre = []
    if rgb_unit:    # RGB 0–1 in: back to BGR 0–255 before the shared feature nodes
        pre = [helper.make_node("Mul", [in_name, "k255"], ["x255"]),
               helper.make_node("Gather", ["x255", "bgr_idx"], ["xbgr"], axis=3)]
    nodes = [
        helper.make_node("ReduceMean", ["x"], ["m"], axes=[1, 2], keepdims=0),
        helper.make_node("Slice", ["x", "starts", "ends", "axes"], ["corner_px"]),
        helper.make_node("ReduceMean", ["corner_px"], ["c"], axes=[1, 2], keepdims=0),
        helper.make_node("Concat", ["m", "c"], ["f255"], axis=1),
        helper.make_node("Mul", ["f255", "inv255"], ["f"]),
    ]
    feat = "f"
    if fixed_batch_reshape:  # as the Keras/tf2onnx exports: a shape constant tied to batch 1
        nodes.append(helper.make_node("Reshape", ["f", "shape_1"], ["f1"]))
        feat = "f1"
    nodes += [
        helper.make_node("MatMul", [feat, "W"], ["z0"]),
        helper.make_node("Add", ["z0", "b"], ["z"]),
        helper.make_node("Sigmoid", ["z"], ["y"]),
        helper.make_node("Identity", ["y"], [out_name]),
    ]
    nodes[0].input[0] = "xbgr" if rgb_unit else in_name
    nodes[1].input[0] = "xbgr" if rgb_unit else in_name
    nodes = pre + nodes
    inits = [
        numpy_helper.from_array(np.array([0, 0], dtype=np.int64), "starts"),
        numpy_helper.from_array(np.array([CORNER, CORNER], dtype=np.int64), "ends"),
        numpy_helper.from_array(np.array([1, 2], dtype=np.int64), "axes"),
        numpy_helper.from_array(np.array(1 / 255.0, dtype=np.float32), "inv255"),
        numpy_helper.from_array(W, "W"),
        numpy_helper.from_array(b, "b"),
    ]
    if fixed_batch_reshape:
        inits.append(numpy_helper.from_array(np.array([1, 6], dtype=np.int64), "shape_1"))
    if rgb_unit:
        inits += [numpy_helper.from_array(np.array(255.0, dtype=np.float32), "k255"),
                  numpy_helper.from_array(np.array([2, 1, 0], dtype=np.int64), "bgr_idx")]
    graph = helper.make_graph(
        nodes, "tagger",
        [helper.make_tensor_value_info(in_name, TensorProto.FLOAT, [batch, SIZE, SIZE, 3])],
        [helper.make_tensor_value_info(out_name, TensorProto.FLOAT, [batch, T])],
        initializer=inits,
    )
    return graph


def build_v3(path) -> Path:
    from onnx import helper, save

    g = _graph("input", "output", "batch_size", False)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 4)])
    model.ir_version = 8
    save(model, str(path))
    return Path(path)


def build_v2(path) -> Path:
    from onnx import helper, save

    g = _graph("input_1:0", "predictions_sigmoid", 1, True)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 7
    save(model, str(path))
    return Path(path)


def build_deepdanbooru(path) -> Path:
    from onnx import helper, save

    g = _graph("input_1", "activation_172", "N", False, rgb_unit=True)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 7
    save(model, str(path))
    return Path(path)


DD_NAMES = [f"rating:{n}" if cat == 9 else n for _, n, cat, _, _ in ROWS]


def write_tag_lines(folder) -> Path:
    """DeepDanbooru's tags.txt (ratings as rating:*) and tags-character.txt."""
    folder = Path(folder)
    (folder / "tags.txt").write_text("\n".join(DD_NAMES) + "\n", encoding="utf-8")
    (folder / "tags-character.txt").write_text("\n".join(n for _, n, c, _, _ in ROWS if c == 4) + "\n",
                                               encoding="utf-8")
    return folder / "tags.txt"


def write_names_csv(path) -> Path:
    """Z3D-E621's tags-selected.csv: a name column only (no categories)."""
    path = Path(path)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["name"])
        for _, name, _, _, _ in ROWS:
            w.writerow([name])
    return path


def make_model_dir(folder, kind: str = "v3") -> Path:
    """kind: v3 | v2 (WD14), z3d (Z3D-E621), deepdanbooru."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if kind == "deepdanbooru":
        build_deepdanbooru(folder / "deepdanbooru.onnx")
        write_tag_lines(folder)
        return folder
    (build_v3 if kind == "v3" else build_v2)(folder / "model.onnx")
    if kind == "z3d":
        write_names_csv(folder / "tags-selected.csv")
    else:
        write_csv(folder / "selected_tags.csv")
    return folder
