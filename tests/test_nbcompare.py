"""utils.nbcompare: nbval's float-rounding tolerance accepts last-digit noise and nothing else."""

from utils.nbcompare import close_text


def test_last_digit_noise_is_accepted():
    assert close_text("baseline PPL 70.46", "baseline PPL 70.47")
    assert close_text("KL 0.00090 [0.00068, 0.00102] (95%) holds", "KL 0.00089 [0.00067, 0.00101] (95%) holds")
    assert close_text("Δ ln PPL −1.36 [−1.77, −1.36]", "Δ ln PPL −1.37 [−1.77, −1.37]")
    assert close_text("Δ 0.000 [−0.004, 0.005]", "Δ 0.001 [−0.003, 0.005]")
    assert close_text("max |Δ| 2.9e-04", "max |Δ| 3.0e-04")
    assert close_text("−0.01 nats", "+0.01 nats")


def test_anything_else_is_refused():
    assert close_text("PPL 153.16", "PPL 153.19")                   # within 0.1%
    assert not close_text("70.46", "70.60")                       # beyond two units of the last digit and 0.1%
    assert not close_text("Δ −0.11 holds", "Δ −0.11 not resolved")  # a verdict moved
    assert not close_text("11,880 bytes", "11,881 bytes")         # integers are exact
    assert not close_text("3 experts", "4 experts")
    assert not close_text("0.5", "0.50")                          # another printed precision
    assert not close_text("1.0 and 2.0", "1.0 and 2.0 and 3.0")   # another layout
    assert not close_text("2.9e-04", "2.9e-03")


def test_numbers_with_units_attached():
    assert close_text("3.9x smaller, 46.6 tok/s", "3.9x smaller, 46.7 tok/s")
    assert close_text("3.9x smaller", "4.0x smaller")                  # one unit of the last digit
    assert not close_text("12.5x", "13.5x")
    assert not close_text("lab_08 and 7", "lab_09 and 7")


def test_reproducible_numerics_env_only_sets_what_is_unset(monkeypatch):
    import platform

    from utils.nbcompare import REPRODUCIBLE_X86_ENV, use_reproducible_numerics

    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    env = {"MKL_CBWR": "COMPATIBLE"}
    got = use_reproducible_numerics(env)
    assert env["MKL_CBWR"] == "COMPATIBLE" and env["ATEN_CPU_CAPABILITY"] == REPRODUCIBLE_X86_ENV["ATEN_CPU_CAPABILITY"]
    assert got == env
    monkeypatch.setattr(platform, "machine", lambda: "arm64")
    env = {}
    assert use_reproducible_numerics(env) == {} and env == {}
