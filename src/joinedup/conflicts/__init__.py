"""JoinedUp conflicts domain: multimorbidity conflict detection and least-harm resolution."""
