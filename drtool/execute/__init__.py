"""The execution layer: builds Ansible, S3, Docker and DNS calls and runs them. Actions call this layer."""
