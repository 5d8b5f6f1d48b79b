"""Long-term condition registers (QOF-style) and the care processes due or overdue for the people on them
(knowledge/population/registers.yaml)."""
