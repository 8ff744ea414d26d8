"""Pictures and reports made from a `RecoveryResult`."""
