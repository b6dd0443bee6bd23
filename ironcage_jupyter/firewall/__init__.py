"""firewall."""
