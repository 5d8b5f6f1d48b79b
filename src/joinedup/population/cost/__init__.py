"""Cost and activity of care across settings, priced with a cited national unit-cost schedule (issue 18, part 5)."""
