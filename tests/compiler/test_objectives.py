"""Named objectives (`loss d: ... trains disc`, `alternate d, g`): what they compile to, and
golden diagnostics for their misuse, through `dslc compile`."""
from pathlib import Path

from dslc.compiler import compile_file
from tests.compiler.helpers import golden

REPO = Path(__file__).resolve().parents[2]

# A tiny GAN: `disc` applied three times (shared), the generator's output detached for d.
GAN = """network gan
input image: [1, 8, 8]
z = image -> flatten -> slice(axis = 1, start = 0, end = 4) -> reshape(4, 1, 1) -> gaussian_like
fake = z -> gen: deconv(1, 8x8) -> sigmoid
d_real = image -> disc: conv(1, 8x8) -> flatten
d_fake = fake -> detach -> disc -> flatten
d_gen = fake -> disc -> flatten
ones = d_real -> detach -> scale(0) -> shift(1)
zeros = d_real -> detach -> scale(0)
"""
D = "loss d: bce(d_real, ones) + bce(d_fake, zeros) trains disc\n"
G = "loss g: bce(d_gen, ones) trains gen\n"


def test_objectives_compile_to_their_totals_and_parameter_groups():
    net, _ = compile_file(str(REPO / "models" / "dcgan.net"))
    assert [(o.name, o.loss, o.trains) for o in net.objectives] == [("d", "loss.d", ("disc",)),
                                                                      ("g", "loss.g", ("gen",))]
    assert net.alternate == ("d", "g")
    assert net.node(net.loss).inputs == ("loss.d", "loss.g")
    assert all(p.startswith("disc.") for p in net.objectives[0].params)
    assert all(p.startswith("gen.") for p in net.objectives[1].params)


def test_alternate_defaults_to_the_declaration_order(dslc, tmp_path):
    rc, _, err = dslc(GAN + D + G)
    assert rc == 0, err
    net, _ = compile_file(str(tmp_path / "prog.net"))
    assert net.alternate == ("d", "g")


def test_an_objective_that_trains_nothing(dslc):
    rc, _, err = dslc(GAN + D.replace("trains disc", "trains gen") + G)
    assert rc == 1
    assert err == golden("""
        error: objective `d` trains nothing: its loss does not depend on the parameters of `gen`
          --> prog.net:10:6
            |
         10 | loss d: bce(d_real, ones) + bce(d_fake, zeros) trains gen
            |      ^ trains nothing
            = a `detach`/`stop_gradient` on the way, or no path at all, cuts the gradient
            = help: train the labels the loss reads through, or remove the `detach` between them

        1 error
        """)


def test_trains_a_label_that_does_not_exist(dslc):
    rc, _, err = dslc(GAN + D.replace("trains disc", "trains dsic") + G)
    assert rc == 1
    assert err == golden("""
        error: objective `d` trains `dsic`, which is not a label in this network
          --> prog.net:10:55
            |
         10 | loss d: bce(d_real, ones) + bce(d_fake, zeros) trains dsic
            |                                                       ^^^^ here
            = top-level labels with parameters: `disc`, `gen`
            = help: did you mean `disc`?

        1 error
        """)


def test_alternate_names_an_unknown_objective(dslc):
    rc, _, err = dslc(GAN + D + G + "train { alternate d, gg }\n")
    assert rc == 1
    assert err == golden("""
        error: `alternate` names `gg`, which is not an objective
          --> prog.net:12:22
            |
         12 | train { alternate d, gg }
            |                      ^^ unknown
            = objectives: `d`, `g`
            = help: did you mean `g`?

        1 error
        """)


def test_alternate_leaving_out_an_objective(dslc):
    rc, _, err = dslc(GAN + D + G + "train { alternate d }\n")
    assert rc == 1
    assert err.splitlines()[0] == "error: `alternate` leaves out objective `g`"
    assert "    = help: add it, e.g. `alternate d, g`" in err.splitlines()


def test_alternate_without_objectives(dslc):
    rc, _, err = dslc(GAN + "loss bce(d_gen, ones)\ntrain { alternate d, g }\n")
    assert rc == 1
    assert err.splitlines()[0] == "error: `alternate` steps named objectives, but this network has none"


def test_an_unnamed_loss_beside_objectives(dslc):
    rc, _, err = dslc(GAN + D + "loss bce(d_gen, ones)\n")
    assert rc == 1
    assert err.splitlines()[0] == "error: an unnamed `loss` beside named objectives"


def test_an_objective_without_trains_and_one_declared_twice(dslc):
    rc, _, err = dslc(GAN + "loss d: bce(d_real, ones)\n" + D + G)
    assert rc == 1
    lines = err.splitlines()
    assert "error: objective `d` does not say what it trains" in lines


def test_trains_on_an_unnamed_loss(dslc):
    rc, _, err = dslc(GAN + "loss bce(d_gen, ones) trains gen\n")
    assert rc == 1
    assert err.splitlines()[0] == "error: `trains` belongs to a named objective"


def test_two_objectives_training_one_label_is_a_warning(dslc):
    rc, _, err = dslc(GAN + D + G.replace("trains gen", "trains gen, disc") + "output d_fake, zeros\n")
    assert rc == 0
    assert err.splitlines()[0] == ("warning: objectives `d` and `g` both train `disc` "
                                   "(2 parameters, e.g. `disc.weight`)")
