"""Pure math of what the papers predict: abc analysis, JL bounds, spectral filters, kernel solvers. No torch.nn."""
