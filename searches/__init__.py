"""Search strategies: the differentiable (DARTS-style) engine."""
