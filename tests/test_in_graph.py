"""In-graph heat maps (``--in-graph``, :mod:`export.in_graph`): equal to the Python runtime's maps, switched, refused
where they cannot be exact."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper
from onnxcam_export import in_graph
from onnxcam_export.errors import ExportError
from small_models import GapNet, export_gapnet

from onnxcam import contract, postprocess
from onnxcam.cli import main
from onnxcam.explainer import Explainer
from onnxcam.methods import get_method

METHODS = ("gradcam", "gradcam++", "xgradcam", "hirescam", "gradcamelementwise", "layercam")
TOLERANCE = 1e-5  # issue 16: the in-graph map equals the Python runtime's to 1e-5


def default_domain_ops(graph: onnx.GraphProto) -> list[tuple[str, str]]:
    """``(domain, op_type)`` of every node of ``graph`` and its subgraphs (If branches, loops), recursively."""
    found = []
    for node in graph.node:
        found.append((node.domain, node.op_type))
        for attr in node.attribute:
            for sub in [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs):
                found += default_domain_ops(sub)
    return found


@pytest.fixture(scope="module", params=[("body.3",), ("body.1", "body.3")], ids=["one-layer", "two-layers"])
def exported(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """GapNet at 32×32 with every in-graph method: one layer (16×16 → 32×32) or two (32×32 and 16×16, fused)."""
    path = tmp_path_factory.mktemp("in_graph") / "gapnet.onnx"
    return export_gapnet(path, layers=request.param, in_graph=list(METHODS))


@pytest.fixture(scope="module")
def session(exported: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(exported), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype(np.float32)


def python_maps(path: Path, x: np.ndarray, **kwargs: object) -> dict[str, np.ndarray]:
    results = Explainer(str(path)).explain_arrays(x, methods=list(METHODS), **kwargs)
    return {m: np.stack([r.maps[m] for r in results]) for m in METHODS}


def cams(session: ort.InferenceSession, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    values = session.run([contract.cam_name(m) for m in METHODS], feeds)
    return dict(zip(METHODS, values, strict=True))


def test_top1_maps_equal_the_python_runtime(exported: Path, session: ort.InferenceSession, images: np.ndarray) -> None:
    ours = cams(session, {contract.INPUT: images, contract.TARGET: np.full(4, -1, np.int64)})
    ref = python_maps(exported, images)
    for method in METHODS:
        assert ours[method].shape == (4, 32, 32) and ours[method].dtype == np.float32
        assert ours[method].min() >= 0 and ours[method].max() <= 1
        assert ours[method].max() > 0.99, method  # normalised: not an all-zero map
        np.testing.assert_allclose(ours[method], ref[method], atol=TOLERANCE, rtol=0, err_msg=method)


@pytest.mark.slow  # importing pytorch_grad_cam alone takes ~10 s of CPU
def test_maps_equal_pytorch_grad_cam(exported: Path, session: ort.InferenceSession, images: np.ndarray) -> None:
    """The peer: pytorch-grad-cam on the same GapNet (seed 0, as exported), same layers, top-1; 1e-4 as in
    tests/test_parity_gradcam.py (onnxruntime vs PyTorch float32 kernels)."""
    torch = pytest.importorskip("torch")
    pgc = pytest.importorskip("pytorch_grad_cam")
    peers = {
        "gradcam": pgc.GradCAM,
        "gradcam++": pgc.GradCAMPlusPlus,
        "xgradcam": pgc.XGradCAM,
        "hirescam": pgc.HiResCAM,
        "gradcamelementwise": pgc.GradCAMElementWise,
        "layercam": pgc.LayerCAM,
    }
    torch.manual_seed(0)
    model = GapNet().eval()
    layers = contract.Metadata.from_props({p.key: p.value for p in onnx.load(str(exported)).metadata_props}).layers
    modules = dict(model.named_modules())
    ours = cams(session, {contract.INPUT: images, contract.TARGET: np.full(4, -1, np.int64)})
    for method, peer in peers.items():
        with peer(model=model, target_layers=[modules[layer] for layer in layers]) as cam:
            ref = cam(input_tensor=torch.from_numpy(images), targets=None)
        np.testing.assert_allclose(ours[method], ref, atol=1e-4, rtol=0, err_msg=method)


def test_targets_and_seeds_equal_the_python_runtime(
    exported: Path, session: ort.InferenceSession, images: np.ndarray
) -> None:
    target = np.array([3, 0, 11, 5], np.int64)
    np.testing.assert_allclose(
        cams(session, {contract.INPUT: images, contract.TARGET: target})["gradcam++"],
        python_maps(exported, images, target=target.tolist())["gradcam++"],
        atol=TOLERANCE,
        rtol=0,
    )
    seed = np.zeros((4, 12), np.float32)
    seed[:, [2, 7]] = 1.0
    feeds = {contract.INPUT: images, contract.TARGET: np.full(4, -1, np.int64), contract.SEED: seed}
    ours = cams(session, feeds)
    ref = python_maps(exported, images, seed=seed)
    for method in ("gradcam", "layercam"):
        np.testing.assert_allclose(ours[method], ref[method], atol=TOLERANCE, rtol=0, err_msg=method)


def test_input_and_target_are_enough(session: ort.InferenceSession, images: np.ndarray) -> None:
    """What a non-Python caller feeds: ``input`` and ``target`` (-1 = top-1); every other input has a default."""
    required = {i.name for i in session.get_inputs()}
    assert required == {contract.INPUT, contract.TARGET}
    feeds = {contract.INPUT: images[:1], contract.TARGET: np.array([-1])}
    assert session.run([contract.cam_name("gradcam")], feeds)[0].shape == (1, 32, 32)


@pytest.mark.parametrize("off", [contract.switch_name(contract.cam_name("gradcam")), contract.GRADIENTS_SWITCH])
def test_switched_off_map_is_empty(session: ort.InferenceSession, images: np.ndarray, off: str) -> None:
    feeds = {contract.INPUT: images, contract.TARGET: np.full(4, -1, np.int64), off: np.array(False)}
    assert session.run([contract.cam_name("gradcam")], feeds)[0].shape == (0, 32, 32)


def test_metadata_and_standard_ops(exported: Path) -> None:
    model = onnx.load(str(exported))
    meta = contract.Metadata.from_props({p.key: p.value for p in model.metadata_props})
    assert meta.in_graph == METHODS and meta.version == contract.CONTRACT_VERSION
    ops = default_domain_ops(model.graph)
    assert ("", "Resize") in ops and ("", "If") in ops
    assert {domain for domain, _ in ops} <= {"", "ai.onnx"}
    assert {o.domain for o in model.opset_import} <= {"", "ai.onnx"}


def test_info_lists_the_maps(exported: Path) -> None:
    from onnxcam.model_file import describe

    assert "in-graph maps: cam:gradcam, cam:gradcam++, cam:xgradcam," in describe(exported)


def test_old_metadata_reads_without_in_graph(exported: Path) -> None:
    props = {p.key: p.value for p in onnx.load(str(exported)).metadata_props}
    del props[contract.META_IN_GRAPH]
    assert contract.Metadata.from_props(props).in_graph == ()


@pytest.mark.parametrize("method", METHODS)
def test_builder_equals_numpy_method(method: str) -> None:
    """Each builder alone vs its numpy twin on random A, G (G with exact zeros: Grad-CAM++'s 0/0 branch)."""
    rng = np.random.default_rng(1)
    a = np.abs(rng.standard_normal((2, 5, 6, 7))).astype(np.float32)
    g = rng.standard_normal((2, 5, 6, 7)).astype(np.float32) * (rng.random((2, 5, 6, 7)) > 0.3)
    b = in_graph.Nodes("t")
    out = in_graph._BUILDERS[method](b, "A", "G")
    graph = helper.make_graph(
        b.nodes,
        "t",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [None] * 4) for n in "AG"],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    ours = ort.InferenceSession(model.SerializeToString()).run(None, {"A": a, "G": g})[0]
    np.testing.assert_allclose(ours[:, 0], get_method(method)(a, g), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("sizes", "target"),
    [([(5, 7)], (32, 29)), ([(16, 16), (8, 8)], (32, 32)), ([(13, 17)], (7, 5)), ([(12, 10)], (6, 5))],
    ids=["up-non-integer", "two-layers", "down", "down-2x"],
)
def test_post_processing_equals_numpy(sizes: list[tuple[int, int]], target: tuple[int, int]) -> None:
    """ReLU → normalise → resize (cv2 INTER_LINEAR, up and down) → fuse, vs :func:`onnxcam.postprocess.postprocess`."""
    rng = np.random.default_rng(2)
    raws = [rng.standard_normal((3, 1, *s)).astype(np.float32) for s in sizes]
    b = in_graph.Nodes("t")
    names = [f"raw{i}" for i in range(len(raws))]
    out = in_graph.add_post_processing(b, names, "image")
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [None] * 4) for n in [*names, "image"]]
    graph = helper.make_graph(b.nodes, "t", inputs, [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    feeds = dict(zip(names, raws, strict=True)) | {"image": np.zeros((3, 3, *target), np.float32)}
    ours = ort.InferenceSession(model.SerializeToString()).run(None, feeds)[0]
    ref = postprocess.postprocess([r[:, 0] for r in raws], (target[1], target[0]))
    assert ours.shape == (3, *target)
    np.testing.assert_allclose(ours, ref, atol=TOLERANCE, rtol=0)


@pytest.mark.parametrize(
    ("methods", "says"),
    [
        (["eigencam"], "needs an SVD"),
        (["Eigen-Grad-CAM"], "needs an SVD"),
        (["scorecam"], "not an in-graph method; choose from gradcam"),
    ],
)
def test_refused_methods_say_why(methods: list[str], says: str) -> None:
    with pytest.raises(ExportError, match=says):
        in_graph.resolve(methods)


def test_names_resolve_like_the_registry() -> None:
    assert in_graph.resolve(["Grad-CAM++", "grad_cam", "gradcam", "LayerCAM"]) == ("gradcam++", "gradcam", "layercam")


def test_cli_option(tmp_path: Path) -> None:
    out = tmp_path / "cli.onnx"
    source = f"{Path(__file__).parent / 'small_models.py'}:GapNet"
    args = ["export", source, "--layer", "body.3", "-o", str(out), "--input-size", "32", "32"]
    result = CliRunner().invoke(main, [*args, "--exporter", "torchscript", "--in-graph", "gradcam,layercam"])
    assert result.exit_code == 0, result.output
    names = [o.name for o in onnx.load(str(out)).graph.output]
    assert names[-2:] == ["cam:gradcam", "cam:layercam"]
    refused = CliRunner().invoke(main, [*args, "--exporter", "torchscript", "--in-graph", "eigencam"])
    assert refused.exit_code != 0 and "needs an SVD" in refused.output and "Traceback" not in refused.output


def test_onnx_file_source(tmp_path: Path) -> None:
    """``export_onnx_file(..., in_graph=...)``: a plain ONNX classifier (fixed batch 1, 16×16) gets the maps too."""
    from onnxcam_export.api import export_onnx_file
    from test_onnx_legacy import LAYER, legacy_model

    onnx.save(legacy_model(13, 7, None), str(tmp_path / "plain.onnx"))
    out = tmp_path / "explainer.onnx"
    export_onnx_file(tmp_path / "plain.onnx", out, [LAYER], verify=False, log=lambda _: None, in_graph=["hirescam"])
    x = np.random.default_rng(4).random((1, 3, 16, 16)).astype(np.float32)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    ours = session.run([contract.cam_name("hirescam")], {contract.INPUT: x, contract.TARGET: np.array([-1])})[0]
    ref = Explainer(str(out)).explain_arrays(x, methods=["hirescam"])[0].maps["hirescam"]
    assert ours.shape == (1, 16, 16)
    np.testing.assert_allclose(ours[0], ref, atol=TOLERANCE, rtol=0)


def test_binary_head_refused(tmp_path: Path) -> None:
    """A single-logit sigmoid head: the runtime flips the gradient for the negative class, the graph cannot."""
    import torch
    from onnxcam_export.api import export_model

    torch.manual_seed(0)
    with pytest.raises(ExportError, match=r"single-logit binary head.*export without --in-graph"):
        export_model(
            GapNet(1).eval(),
            tmp_path / "b.onnx",
            ["body.3"],
            (32, 32),
            exporter="torchscript",
            verify=False,
            log=lambda _: None,
            in_graph=["gradcam"],
        )
    assert not (tmp_path / "b.onnx").exists()


def test_detector_refused(exported: Path) -> None:
    model = onnx.load(str(exported))
    meta = contract.Metadata.from_props({p.key: p.value for p in model.metadata_props})
    detector = contract.Metadata(meta.layers, detection=contract.Detection("yolov8", (16, 100)))
    with pytest.raises(ExportError, match="detector is explained per box"):
        in_graph.add_cams(model, ["gradcam"], detector)


def test_export_refuses_a_map_that_differs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The export-time check (:func:`in_graph.check_cams`): a builder computing another formula is caught."""
    monkeypatch.setitem(in_graph._BUILDERS, "gradcam", in_graph.layer_cam)
    with pytest.raises(ExportError, match="in-graph map differs from the Python runtime's"):
        export_gapnet(tmp_path / "wrong.onnx", in_graph=["gradcam"], verify=False)
    assert not (tmp_path / "wrong.onnx").exists()
