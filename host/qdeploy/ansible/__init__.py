"""`qdeploy push --engine ansible` and `qdeploy ansible export`: the release protocol as an
Ansible playbook (`export`), run by ansible-runner (`runner`), its outcome in push results."""
