"""Static validation of the deploy files: Dockerfile, compose, Kubernetes, monitoring.

Run alone with `python -m pytest deploy_tests -p no:django`. Tools that pip cannot
install come from scripts/install_ops_tools.sh; a test whose tool is missing fails and
says so, it never skips.
"""
