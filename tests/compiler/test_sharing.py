"""Weight sharing in the language (docs/LANGUAGE.md, "Sharing weights"): a labelled block or op
instance applied again by its label (`d_fake = fake -> disc`) makes new nodes that use the first
application's parameters; the summary counts them once, artifacts keep the sharing, and each
misuse is a diagnostic at its place."""
import json
import textwrap

import pytest

from dslc.artifact import ArtifactError, from_dict, to_dict
from dslc.cli import main
from dslc.compiler import compile_file
from dslc.summary import to_json, totals


def golden(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


@pytest.fixture
def dslc(tmp_path, monkeypatch, capsys):
    """`dslc compile prog.net` on a program in a fresh working directory: (exit code, stdout, stderr)."""
    monkeypatch.chdir(tmp_path)

    def run(program):
        (tmp_path / "prog.net").write_text(program)
        rc = main(["compile", "prog.net"])
        out, err = capsys.readouterr()
        assert "Traceback" not in out + err and "internal error" not in out + err, err
        return rc, out, err
    return run


def build(tmp_path, text):
    (tmp_path / "t.net").write_text(text)
    return compile_file(str(tmp_path / "t.net"))[0]


BLOCK = """
block discriminator(h = 8) {
  dense(h) -> tanh -> dense(1)
}
"""

GAN = """network gan
input z: [6]
input image: [10]
""" + BLOCK + """
d_fake = fake -> disc                     # before the application that makes `disc`: order is free
fake = z -> gen: (dense(8) -> relu -> dense(10))
d_real = image -> disc: discriminator()
output d_real, d_fake
"""


def test_second_application_shares_the_first_ones_parameters(tmp_path):
    net = build(tmp_path, GAN)
    assert net.node("disc_2.dense1").shares == "disc.dense1"
    assert net.node("disc_2.dense2").shares == "disc.dense2"
    assert net.node("disc_2.dense1").inputs == ("gen.2",)
    assert net.node("disc_2.tanh1").shares is None          # nothing to share
    assert net.node("disc.dense1").shares is None
    assert net.node("disc_2.dense1").param_name("weight") == "disc.dense1.weight"
    # counted once: D (10*8+8 + 8+1) and G (6*8+8 + 8*10+10)
    assert totals(net)["parameters"] == 97 + 146
    assert net.node("disc_2.dense1").params_count == 0
    assert net.node("disc_2.dense1").macs == net.node("disc.dense1").macs


def test_summary_marks_shared_layers(dslc):
    rc, out, _ = dslc(GAN)
    assert rc == 0
    assert [line.split()[-2] for line in out.splitlines() if line.startswith("disc_2.dense")] == ["shared", "shared"]
    assert "parameters:             243" in out


def test_json_summary_names_the_owner(tmp_path):
    layers = {r["name"]: r for r in to_json(build(tmp_path, GAN))["layers"]}
    assert layers["disc_2.dense1"]["shares"] == "disc.dense1"
    assert "shares" not in layers["disc.dense1"]


def test_a_labelled_second_application_and_a_shared_op(tmp_path):
    net = build(tmp_path, """input a: [4]
input b: [4]
x = a -> enc: dense(3)
y = b -> enc_b: enc -> relu
z = a -> enc_b                                   # a label of a second application is the same instance
output x, y, z
""")
    assert net.node("enc_b").shares == "enc"
    assert net.node("enc_b_2").shares == "enc"
    assert totals(net)["parameters"] == 15


def test_sharing_inside_a_block_and_a_shared_block_applied_again(tmp_path):
    net = build(tmp_path, """input a: [4]
input b: [4]
block twice(c) {
  x = in -> inner: dense(c)
  in -> inner -> add(x)
}
y = a -> p: twice(4)
w = b -> p
output y, w
""")
    assert net.node("p.inner_2").shares == "p.inner"
    assert net.node("p_2.inner").shares == "p.inner"
    assert net.node("p_2.inner_2").shares == "p.inner"
    assert totals(net)["parameters"] == 20


def test_artifact_keeps_sharing_and_refuses_a_forged_owner(tmp_path):
    net = build(tmp_path, GAN)
    d = json.loads(json.dumps(to_dict(net)))
    back = from_dict(d)
    assert back.node("disc_2.dense1").shares == "disc.dense1"
    assert totals(back)["parameters"] == totals(net)["parameters"]
    for node in d["nodes"]:
        if node["name"] == "disc_2.dense1":
            node["shares"] = "gen.0"           # a dense of other shapes
    with pytest.raises(ArtifactError, match="shares the parameters"):
        from_dict(d)


def test_arguments_on_a_second_application(dslc):
    rc, _, err = dslc("input image: [10]\n" + BLOCK + """
d_real = image -> disc: discriminator()
d_x = image -> disc(4)
output d_real, d_x
""")
    assert rc == 1
    assert err == golden("""
        error: `disc` is a shared instance: apply it again without arguments
          --> prog.net:8:16
           |
         8 | d_x = image -> disc(4)
           |                ^^^^^^^ arguments here
           = `disc` was made at prog.net:7:25
           = help: write `-> disc`: it keeps the arguments of its first application

        1 error
        """)


def test_a_second_application_to_another_shape(dslc):
    rc, _, err = dslc("input image: [10]\ninput z: [6]\n" + BLOCK + """
d_real = image -> disc: discriminator()
d_fake = z -> disc
output d_real, d_fake
""")
    assert rc == 1
    assert err == golden("""
        error: shared instance `disc` cannot use its parameters here
          --> prog.net:9:15
           |
         9 | d_fake = z -> disc
           |               ^^^^ parameters of other shapes
           = `disc.dense1` holds weight [8, 10], bias [8]
           = here it would need weight [8, 6], bias [8]
           = `disc.dense1` reads [N, 10]
           = here it reads [N, 6]
           = in `dense(h)` at prog.net:5:3
           = help: a shared instance takes inputs shaped like those of its first application

        1 error
        """)


def test_a_second_application_without_input(dslc):
    rc, _, err = dslc("""input image: [10]
d = image -> enc: dense(3)
block b() {
  relu
}
e = enc
output d, e
""")
    assert rc == 1
    assert "error: shared instance `enc` has no input" in err
    assert "help: apply it to a tensor: `y = x -> enc`" in err


def test_a_failed_first_application_is_reported_once(dslc):
    rc, _, err = dslc("""input image: [10]
d = image -> enc: dense(0)
e = image -> enc
output d, e
""")
    assert rc == 1
    assert err.count("error:") == 1
