"""Networks: pure backbones ``model(x, t, y) -> velocity``; they know nothing of solvers."""
