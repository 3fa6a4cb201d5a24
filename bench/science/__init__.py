"""Science tables: v2 (does a method transfer knowledge) and v3 (scarce or noisy labels); their generators."""
