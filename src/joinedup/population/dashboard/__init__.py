"""Population dashboards for analysts, managers and partnership boards, from precomputed published figures (issue 18, part 6)."""
