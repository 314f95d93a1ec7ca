"""ONNX export: parity with PyTorch on the run's own images, metadata that round-trips, every head exported."""

from __future__ import annotations

import dataclasses
import shutil
import time
from pathlib import Path

import onnx
import pytest
import torch
from torch import nn

import visiontune
from tests.test_bundle import tiny_bundle
from visiontune.bundle import BundleMeta, load_bundle, read_meta
from visiontune.data.transforms import Preprocessing
from visiontune.errors import ConfigError, ModelError
from visiontune.export import ExportConfig, ExportReport, export_model
from visiontune.export.check import check_images, compare, throughputs
from visiontune.export.onnx import export_bundle, to_onnx
from visiontune.predict.onnx_backend import OnnxModel, meta_from_onnx

TOLERANCE = 1e-4


def _test_images(data: Path) -> list[tuple[Path, str]]:
    return [(p, p.parent.name) for p in sorted((data / "test").rglob("*.png"))]


@pytest.fixture
def exported(finetuned_onnx: ExportReport) -> ExportReport:
    return finetuned_onnx


def test_finetuned_export_matches_pytorch_on_the_validation_split(exported: ExportReport, finetuned_run: Path) -> None:
    parity = exported.parity
    assert "valid split" in exported.images  # the run's own held-out images, found through splits.csv
    rows = (finetuned_run / "splits.csv").read_text().splitlines()
    assert parity.images == sum(1 for row in rows if row.endswith(",valid"))
    assert parity.max_abs_diff <= TOLERANCE
    assert parity.agreement == 1.0
    assert parity.candidate_accuracy == pytest.approx(parity.reference_accuracy)
    recorded = read_meta(finetuned_run).metrics["valid_accuracy"]
    assert parity.reference_accuracy == pytest.approx(recorded, abs=1e-6)
    assert sorted(p.name for p in exported.path.parent.iterdir()) == ["model.int8.onnx", "model.onnx"]  # no temporary


def test_metadata_round_trips_and_the_batch_axis_is_dynamic(exported: ExportReport, finetuned_run: Path) -> None:
    _, meta = load_bundle(finetuned_run)
    model = OnnxModel(exported.path)
    back = meta_from_onnx(model)
    assert back.classes == meta.classes
    assert back.preprocessing == meta.preprocessing
    # the k-NN detector's bank travels in the metadata too: the .onnx file alone scores "knn"
    assert meta.calibration.detector is not None and back.calibration.detector is not None
    assert torch.equal(back.calibration.detector.bank, meta.calibration.detector.bank)
    assert back.calibration.detector.k == meta.calibration.detector.k
    plain = dataclasses.replace(meta.calibration, detector=None)
    assert dataclasses.replace(back.calibration, detector=None) == plain
    assert back.arch == meta.arch
    proto = onnx.load(str(exported.path))
    props = {p.key: p.value for p in proto.metadata_props}
    assert {"classes", "preprocessing", "calibration", "weights_sha256"} <= set(props)  # plain keys, any reader
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # symbolic batch
    height, width = meta.preprocessing.image_size
    assert [output.name for output in proto.graph.output] == ["logits", "embeddings"]
    for batch in (1, 5):
        assert model(torch.zeros(batch, 3, height, width)).shape == (batch, len(meta.classes))


def test_onnx_backend_gives_torch_top1_on_the_test_split(
    exported: ExportReport, finetuned_run: Path, trained_data: Path
) -> None:
    images = [p for p, _ in _test_images(trained_data)]
    # the graph's embeddings and the metadata's bank give the bundle's own "knn" score, as torch computes it
    torch_side = visiontune.load(finetuned_run, device="cpu").predict(images, topk=3)
    onnx_side = visiontune.load(exported.path).predict(images, topk=3)
    assert {p.score_name for p in onnx_side} == {p.score_name for p in torch_side} == {"knn"}
    assert [p.label for p in onnx_side] == [p.label for p in torch_side]
    assert [p.unknown for p in onnx_side] == [p.unknown for p in torch_side]
    assert [p.score for p in onnx_side] == pytest.approx([p.score for p in torch_side], abs=1e-4)
    diffs = [abs(a.probability - b.probability) for a, b in zip(onnx_side, torch_side, strict=True)]
    assert max(diffs) <= TOLERANCE


def test_bundle_with_backend_onnx_uses_its_model_onnx_else_exports_once(
    exported: ExportReport, finetuned_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import visiontune.export.onnx as export_onnx

    bundle = tmp_path / "bundle"
    shutil.copytree(finetuned_run / "model", bundle)
    shutil.copy(exported.path, bundle / "model.onnx")
    calls: list[Path] = []
    real_export = export_onnx.export_bundle
    monkeypatch.setattr(export_onnx, "export_bundle", lambda src, out: calls.append(out) or real_export(src, out))
    predictor = visiontune.load(bundle, backend="onnx")
    assert isinstance(predictor.model, OnnxModel) and predictor.model.path == bundle / "model.onnx"
    assert calls == []
    # a bundle without model.onnx: a random small_cnn's, whose trace takes a second, not the fine-tuned model's 15
    bare = tiny_bundle(tmp_path / "bare")
    first = visiontune.load(bare, backend="onnx")
    second = visiontune.load(bare, backend="onnx")
    assert len(calls) == 1 and first.model.path == second.model.path == calls[0]  # cached, not exported again
    with pytest.raises(ConfigError, match="onnx backend runs on the CPU"):
        visiontune.load(bundle, backend="onnx", device="cuda")


def test_features_logreg_bundle_exports_with_parity(trained_data: Path, tmp_path: Path) -> None:
    """A features bundle (frozen backbone + fitted logistic regression) through `export_model`.

    small_cnn stands in for the pretrained backbone: tracing efficientnet_lite0 is checked by the fine-tuned export
    above, and the features bundle's own part (the fitted head on the backbone's pooled vectors) is the same on both.
    """
    from visiontune.config import DataConfig, FeaturesConfig, ModelConfig, RunConfig, TrainConfig
    from visiontune.training.pipeline import train

    config = RunConfig(
        DataConfig(source=str(trained_data), valid_pct=0.25),
        ModelConfig(backbone="small_cnn", image_size=28),
        TrainConfig(method="features", num_workers=0),
        features=FeaturesConfig(heads=("logreg",)),
        out=str(tmp_path / "run"),
    )
    run = train(config).run_dir
    report = export_model(run, ExportConfig(out=str(tmp_path / "features.onnx")))
    assert read_meta(run).arch["fitted_head"]["kind"] == "linear"
    assert report.parity.max_abs_diff <= TOLERANCE
    assert report.parity.agreement == 1.0


@pytest.mark.slow
@pytest.mark.parametrize("head", ["knn", "rf"])
def test_knn_and_forest_heads_export_too(head: str, trained_data: Path, tmp_path: Path) -> None:
    """k-NN (top-k over stored vectors) and the forest (tree walks) become TopK / Gather graphs: same answers."""
    from visiontune.config import DataConfig, FeaturesConfig, ModelConfig, RunConfig, TrainConfig
    from visiontune.training.pipeline import train

    config = RunConfig(
        DataConfig(source=str(trained_data), valid_pct=0.25),
        ModelConfig(image_size=64),  # as features_run: its cached features are reused
        TrainConfig(method="features", num_workers=0),
        features=FeaturesConfig(heads=(head,)),
        out=str(tmp_path / "run"),
    )
    run = train(config).run_dir
    report = export_model(run, ExportConfig(out=str(tmp_path / f"{head}.onnx")))
    assert report.parity.max_abs_diff <= TOLERANCE and report.parity.agreement == 1.0


def test_int8_twin_is_smaller_agrees_with_float_and_says_so_in_its_metadata(
    exported: ExportReport, tmp_path: Path
) -> None:
    report = exported  # the fixture's export asked for the int8 twin: one trace serves both
    quant = report.quantized
    assert quant is not None and quant.path == report.path.with_name("model.int8.onnx") and quant.path.is_file()
    assert quant.size_bytes * 3 < quant.float_size_bytes  # int8 weights: about a quarter of float32
    assert "train split" in quant.calibration  # calibrated on training images, scored on the valid split
    checked = quant.comparison
    assert checked.images == report.parity.images and checked.agreement >= 0.9
    assert abs(checked.candidate_accuracy - checked.reference_accuracy) <= 0.1
    assert quant.float_speed > 0 and quant.int8_speed > 0
    _assert_int8_kernels(quant.path, report.path, optimised=tmp_path / "optimised.onnx")
    props = {p.key: p.value for p in onnx.load(str(quant.path)).metadata_props}
    assert props["quantization"].startswith("int8 static QDQ") and "classes" in props  # a consumer still has it all
    int8 = visiontune.load(quant.path)
    assert int8.classes == visiontune.load(report.path).classes
    assert sorted(p.name for p in report.path.parent.iterdir()) == ["model.int8.onnx", "model.onnx"]


def _assert_int8_kernels(int8: Path, float32: Path, *, optimised: Path) -> None:
    """What makes the int8 twin faster (timing belongs to bench/): every convolution's and matrix product's weights
    are stored as int8 and quantised/dequantised around it (QDQ), and onnxruntime fuses those into integer kernels
    (QLinearConv, QLinearMatMul, ...) when it loads the graph, so the arithmetic runs in int8."""
    import onnxruntime as ort

    graph = onnx.load(str(int8)).graph
    made_by = {out: node for node in graph.node for out in node.output}
    int8_weights = {i.name for i in graph.initializer if i.data_type == onnx.TensorProto.INT8}
    heavy = [n for n in graph.node if n.op_type in ("Conv", "MatMul", "Gemm")]
    float_heavy = [n for n in onnx.load(str(float32)).graph.node if n.op_type in ("Conv", "MatMul", "Gemm")]
    assert heavy and len(heavy) == len(float_heavy)
    for node in heavy:
        weight = made_by.get(node.input[1])
        assert weight is not None and weight.op_type == "DequantizeLinear", node.name
        assert weight.input[0] in int8_weights, node.name  # the stored weights are int8
        source = made_by.get(node.input[0])
        assert source is not None and source.op_type == "DequantizeLinear", node.name  # activations quantised too
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(optimised)  # not beside `int8`: the shared fixture's folder stays as is
    ort.InferenceSession(str(int8), options, providers=["CPUExecutionProvider"])
    fused = [n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node]
    integer = [op for op in fused if op.startswith("QLinear") or op in ("ConvInteger", "MatMulInteger")]
    assert sum(op == "QLinearConv" for op in fused) >= 0.9 * sum(n.op_type == "Conv" for n in heavy), set(fused)
    assert "Conv" not in fused and integer  # no convolution left in float


class _Warming(nn.Module):
    """`slow` seconds a call for the first `calls`, then `fast`: a graph whose first runs allocate."""

    def __init__(self, *, calls: int, slow: float, fast: float) -> None:
        super().__init__()
        self.left, self.slow, self.fast = calls, slow, fast

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.left -= 1
        time.sleep(self.slow if self.left >= 0 else self.fast)
        return x


def test_throughputs_measure_the_steady_state_not_the_warm_up() -> None:
    batch = torch.zeros(8, 3, 4, 4)
    warming = _Warming(calls=20, slow=0.01, fast=0.001)  # 20 slow calls: more than a short timing makes
    steady = _Warming(calls=0, slow=0.0, fast=0.002)
    warm_speed, steady_speed = throughputs([warming, steady], batch, seconds=0.1)
    assert 0.5 * 8 / 0.001 < warm_speed <= 8 / 0.001  # 8,000 images/s at most, the warm-up left out
    assert 0.5 * 8 / 0.002 < steady_speed <= 8 / 0.002
    assert warm_speed > 1.5 * steady_speed  # the order of the two is what the int8 report prints


class _DataDependent(nn.Module):
    """Python control flow on a tensor's value: what torch.export can't trace."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.mean() > 0:
            return x.flatten(1)[:, :3]
        return -x.flatten(1)[:, :3]


def test_a_model_that_cannot_be_traced_fails_with_one_clear_line(tmp_path: Path) -> None:
    pre = Preprocessing(image_size=8, mean=(0.5,) * 3, std=(0.5,) * 3)
    meta = BundleMeta(arch={"backbone": "toy"}, classes=["a", "b", "c"], preprocessing=pre)
    with pytest.raises(ModelError) as raised:
        to_onnx(_DataDependent(), meta, tmp_path / "toy.onnx", where="toy-bundle")
    message = str(raised.value)
    assert "\n" not in message
    assert "toy-bundle" in message and "can't be exported to ONNX" in message and "--backend torch" in message
    assert not (tmp_path / "toy.onnx").exists()


def test_bad_options_are_refused_before_any_work() -> None:
    with pytest.raises(ConfigError, match="Received: quantize='int4'"):
        ExportConfig(quantize="int4")
    with pytest.raises(ConfigError, match=r"`opset` must be one of 18\.\.23"):
        ExportConfig(opset=11)


def test_check_finds_moved_data_with_data_and_falls_back_to_bundled_images(
    exported: ExportReport, finetuned_run: Path, trained_data: Path, tmp_path: Path
) -> None:
    """A run whose data moved is re-scored from --data; a bundle alone is still checked, on real images."""
    meta = read_meta(finetuned_run)
    moved = tmp_path / "moved"
    shutil.copytree(trained_data, moved)
    found = check_images(finetuned_run / "model", meta, data=moved, split="test")
    assert found.labels is not None
    located = {(p.relative_to(moved), meta.classes[y]) for p, y in zip(found.items, found.labels, strict=True)}
    assert located == {(p.relative_to(trained_data), label) for p, label in _test_images(trained_data)}
    bundle = tmp_path / "bundle"
    shutil.copytree(finetuned_run / "model", bundle)
    alone = check_images(bundle, meta)
    assert alone.labels is None and "bundled Fashion-MNIST images" in alone.description
    assert "--data" in alone.description  # says how to get the accuracy too
    reference = visiontune.load(bundle, device="cpu")
    comparison = compare(reference, visiontune.load(exported.path), alone)
    assert comparison.images == len(alone.items) and comparison.max_abs_diff <= TOLERANCE
    assert comparison.reference_accuracy is None


def test_an_ensemble_bundle_exports_as_one_graph_of_its_averaged_members(tmp_path: Path) -> None:
    from visiontune.bundle import save_bundle
    from visiontune.models import Ensemble, create_classifier
    from visiontune.predict.onnx_backend import OnnxModel

    members = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        members.append(create_classifier("small_cnn", 3, pretrained=False, image_size=28))
    ensemble = Ensemble(members).eval()
    bundle = save_bundle(tmp_path / "model", ensemble,
                         BundleMeta(ensemble.arch, ["a", "b", "c"], ensemble.preprocessing))  # fmt: skip
    export_bundle(bundle, tmp_path / "ensemble.onnx")
    graph = OnnxModel(tmp_path / "ensemble.onnx")
    images = torch.randn(5, 3, 28, 28)
    with torch.no_grad():
        expected = ensemble(images)
    torch.testing.assert_close(torch.as_tensor(graph(images)), expected, rtol=1e-4, atol=TOLERANCE)
    assert len(meta_from_onnx(graph).arch["ensemble"]) == 2  # the metadata says what the graph averages
