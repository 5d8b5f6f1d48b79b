"""JoinedUp synth domain."""
