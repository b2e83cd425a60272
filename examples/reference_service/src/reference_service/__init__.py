"""bastion's reference service."""
