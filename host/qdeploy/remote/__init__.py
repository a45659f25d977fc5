"""Reaching devices: SSH connections, targets from ssh_config, Ansible-style inventories."""
