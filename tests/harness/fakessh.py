"""The old name of tests/harness/sshd.py, kept so tests written against it keep working: the
fake `ssh` is gone, these names now reach a real sshd on 127.0.0.1. Import from sshd.py."""

from tests.harness.sshd import install_ssh as install_fake_ssh
from tests.harness.sshd import path_with, sharded_tiny, two_hosts

__all__ = ["install_fake_ssh", "path_with", "sharded_tiny", "two_hosts"]
