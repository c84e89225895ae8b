"""How good a synthetic set is: metrics, feature extractors, downstream utility and the evaluation report."""
