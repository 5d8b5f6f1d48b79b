"""JoinedUp interop domain."""
