"""roi_pool / roi_align in programs, and inputs that are not batch-first (`unbatched [R, 5]`):
the boxes lead with their own axis R, the pooled output and everything after it (heads, labels,
loss) are counted by R, and tensors counted by sample and by box meet only in the roi ops
(docs/LANGUAGE.md, "Inputs that are not batch-first"). Misuse in the golden style of
test_diagnostics.py."""
from dslc.compiler import compile_file
from tests.compiler.helpers import golden

HEAD = "network t\ninput image: [8, 6, 6]\n"

PROGRAM = HEAD + """input rois: unbatched [R, 5]
input label: unbatched int[R]
pooled = roi_align(image, rois, output = 2x2, scale = 0.5, sampling_ratio = 2, aligned = true)
cls = pooled -> flatten -> dense(3)
loss cross_entropy(cls, label)
"""


def test_the_rows_after_roi_pooling_are_counted_by_box(tmp_path):
    path = tmp_path / "prog.net"
    path.write_text(PROGRAM)
    net, _ = compile_file(str(path), {})
    assert net.node("rois").type.shape == ("R", 5)
    assert net.node("label").type.shape == ("R",) and net.node("label").type.dtype == "int64"
    assert net.node("roi_align1").type.shape == ("R", 8, 2, 2)
    assert net.node("dense1").type.shape == ("R", 3)
    assert net.node("dense1").params["weight"].shape == (3, 32)
    assert "R" in net.symbols


def test_boxes_declared_per_sample(dslc):
    rc, out, err = dslc(HEAD + "input rois: [5]\ny = roi_pool(image, rois, output = 2x2)\n")
    assert rc == 1
    assert err == golden("""
        error: roi_pool boxes are one row per box over the whole batch, but [N, 5] counts samples
          --> prog.net:4:5
           |
         4 | y = roi_pool(image, rois, output = 2x2)
           |     ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^ here
           = expected [R, 5], R boxes over the batch (the first column is the sample index)
           = found    [N, 5], one row per sample
           = input `image` is [N, 8, 6, 6]
           = input `rois` is [N, 5]
           = help: declare the boxes `input rois: unbatched [R, 5]`

        1 error
        """)


def test_tensors_counted_by_sample_and_by_box_do_not_mix(dslc):
    rc, out, err = dslc(HEAD + "input rois: unbatched [R, 5]\ny = roi_pool(image, rois, output = 2x2) -> add(image)\n")
    assert rc == 1
    assert err == golden("""
        error: add mixes tensors counted differently: `roi_pool1` leads with R [R, 8, 2, 2], `image` leads with N [N, 8, 6, 6]
          --> prog.net:4:44
           |
         4 | y = roi_pool(image, rois, output = 2x2) -> add(image)
           |                                            ^^^^^^^^^^ here
           = expected inputs whose first axes count the same rows
           = found    [R, 8, 2, 2], [N, 8, 6, 6]
           = input `roi_pool1` is [R, 8, 2, 2]
           = input `image` is [N, 8, 6, 6]
           = help: a tensor counted by sample (N) meets one counted by box (R) only in roi_pool or roi_align

        1 error
        """)


def test_unbatched_input_needs_named_rows(dslc):
    rc, out, err = dslc(HEAD + "input rois: unbatched [4, 5]\ny = roi_pool(image, rois, output = 2x2)\n")
    assert rc == 1
    assert err == golden("""
        error: an unbatched input's first dimension counts its rows and needs a name, found `4`
          --> prog.net:3:1
           |
         3 | input rois: unbatched [4, 5]
           | ^^^^^^^^^^^^^^^^^^^^^^^^^^^^ unbatched input
           = help: name the rows, e.g. `input rois: unbatched [R, 5]` (N is the batch: a tensor with one row per sample is not unbatched)

        1 error
        """)


def test_roi_align_sampling_ratio_zero(dslc):
    rc, out, err = dslc(HEAD + "input rois: unbatched [R, 5]\ny = roi_align(image, rois, output = 2x2, sampling_ratio = 0)\n")
    assert rc == 1
    assert err.startswith("error: roi_align sampling_ratio must be positive or -1, found 0\n")
    assert "= expected samples per bin side (2 in Mask R-CNN), or -1 for adaptive\n" in err
