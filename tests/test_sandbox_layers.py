"""Layer independence: switch each mechanism off in turn; the others must still stop the attacks.

Also the degraded path (user namespaces refused, as under Docker's default seccomp profile) and
controls showing the battery does detect a leak when every layer guarding an attack is off.
"""

from __future__ import annotations

import pytest
from sandbox_support import Bait, SandboxedKernel, leaks, run_battery

pytestmark = pytest.mark.timeout(180)

# Attacks on the kernel's own syscall surface that only seccomp refuses (nothing else can: they are
# not about files, network or other processes). With seccomp off they are expected to get through.
SECCOMP_ONLY = {"personality_no_aslr", "keyctl", "bpf", "process_vm_readv", "netlink_sock_diag"}


@pytest.fixture(scope="module")
def bait(tmp_path_factory):
    root = tmp_path_factory.mktemp("sandbox-layers")
    with pytest.MonkeyPatch.context() as mp:
        bait = Bait.create(root)
        mp.setenv("HOME", str(bait.home))
        yield bait
        bait.close()


def _battery(bait: Bait, **spec_kw) -> dict[str, str]:
    kernel = SandboxedKernel(bait.spec(**spec_kw))
    try:
        results = run_battery(kernel, bait)
        reply, out = kernel.run("print(sum(range(10)))")
        assert reply["status"] == "ok" and out.strip() == "45", "kernel unusable after the battery"
        return results
    finally:
        kernel.shutdown()


@pytest.mark.parametrize("mechanism", ["pidns", "mounts", "landlock", "netns"])
def test_remaining_layers_hold_with_one_mechanism_off(bait, mechanism):
    results = _battery(bait, disabled_layers=frozenset({mechanism}))
    assert leaks(results) == {}
    assert bait.hits == []


def test_remaining_layers_hold_with_seccomp_off(bait):
    results = _battery(bait, disabled_layers=frozenset({"seccomp"}))
    assert set(leaks(results)) <= SECCOMP_ONLY
    assert bait.hits == []


def test_degraded_path_without_namespaces(bait):
    """User namespaces refused: Landlock + seccomp + rlimits alone stop every attack."""
    results = _battery(bait, refuse_namespaces=True)
    assert leaks(results) == {}
    assert bait.hits == []


def test_control_filesystem_layer_off_leaks_secrets(bait):
    """Both filesystem mechanisms off: the battery must see the leak (it can fail)."""
    found = leaks(_battery(bait, disabled_layers=frozenset({"filesystem"})))
    assert {"read_ssh_key", "read_jupyter_server_token", "write_outside"} <= set(found)


def test_control_network_mechanisms_off_leak_udp(bait):
    """netns and seccomp off: Landlock still refuses TCP, but UDP reaches the host (why seccomp is there)."""
    found = leaks(_battery(bait, disabled_layers=frozenset({"netns", "seccomp"})))
    assert "udp_to_host" in found
    assert "tcp_to_host_server" not in found
