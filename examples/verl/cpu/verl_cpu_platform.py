"""A "cpu" platform for veRL 0.9.1, so that its real trainer runs on a machine without a GPU.

A harness for trying and testing sae-rl inside veRL (examples/verl/run_cpu.sh), not a training
setup: everything runs in fp32 on the CPU, one process per role.

veRL imports every module named in VERL_USE_EXTERNAL_MODULES when `verl` is imported, in every
process (the driver and each Ray worker), and picks the platform named by VERL_PLATFORM. With
VERL_USE_EXTERNAL_MODULES=verl_cpu_platform and VERL_PLATFORM=cpu this module:

- registers PlatformCPU: device "cpu", `current_device()` "cpu" (veRL passes it to `.to()`),
  collectives over gloo, Ray's "GPU" resource as the scheduling slot (Ray is started with
  `ray_init.num_gpus` fake GPUs, so veRL's placement groups can be satisfied);
- registers the rollout `hf_cpu` (verl_cpu_rollout) in veRL's two rollout registries;
- makes veRL's critic loader use the model config's attention implementation: 0.9.1's
  `verl.utils.model.load_valuehead_model` passes attn_implementation="flash_attention_2" to
  transformers whatever the config says, which cannot load without flash-attn;
- makes veRL's process groups plain gloo: 0.9.1 asks torch for "cpu:gloo,<device>:<backend>", which
  torch rejects when the device is the CPU itself;
- makes the FSDP2 CPU-offload policy veRL forces on forward-only models (the reference policy)
  not pin memory (pinning needs an accelerator).

Nothing of veRL is edited; the patches are applied when the target module is imported. Besides,
run_cpu.sh sets VERL_ENGINE_DEVICE=cuda: veRL registers its FSDP training engines for the devices
cuda and npu only, and their code runs on any torch device.
"""

from __future__ import annotations

import contextlib
import functools
import os
from types import ModuleType
from typing import Any

import torch
from verl.plugin.platform import PlatformBase, PlatformRegistry

from sae_core.integration.hooks import on_import

ROLLOUT_NAME = "hf_cpu"


class _CPUDeviceModule:
    """What veRL calls on `get_torch_device()` (torch.cuda's API), answered for the CPU: torch.cpu
    where it has the function, else a harmless stand-in (caches to free: none; memory: 0 in use,
    the host's RAM available)."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        if hasattr(torch.cpu, name):
            return getattr(torch.cpu, name)
        if name in ("get_rng_state", "set_rng_state", "manual_seed", "manual_seed_all", "Event"):
            return getattr(torch, name) if name != "Event" else torch.Event
        if name == "mem_get_info":
            return _mem_get_info
        if name == "get_device_name":
            return lambda *_: "cpu"
        if name.startswith(("memory_", "max_memory_")):
            return lambda *_args, **_kwargs: 0
        return lambda *_args, **_kwargs: None  # empty_cache, ipc_collect, set_per_process_memory_fraction...


_DEVICE_MODULE = _CPUDeviceModule()


def _mem_get_info(*_args) -> tuple[int, int]:
    """(free, total) bytes of host memory."""
    pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
    free = os.sysconf("SC_AVPHYS_PAGES") * size
    return free, pages * size


@PlatformRegistry.register(platform="cpu")
class PlatformCPU(PlatformBase):
    """veRL's platform interface for plain CPU processes."""

    @property
    def device_name(self) -> str:
        return "cpu"

    @property
    def vendor_name(self) -> str:
        return "cpu"

    @property
    def device_module(self) -> ModuleType:
        return _DEVICE_MODULE  # type: ignore[return-value]

    def is_available(self) -> bool:
        return True

    def current_device(self) -> str:  # type: ignore[override]
        return "cpu"

    def device_count(self) -> int:
        return 1

    def set_device(self, device_index: int) -> None:
        pass

    def synchronize(self, device_index: int | None = None) -> None:
        pass

    def manual_seed(self, seed: int) -> None:
        torch.manual_seed(seed)

    def manual_seed_all(self, seed: int) -> None:
        torch.manual_seed(seed)

    def set_allocator_settings(self, settings: str) -> None:
        pass

    def empty_cache(self) -> None:
        pass

    def get_device_capability(self, device_index: int = 0) -> tuple[int | None, int | None]:
        return None, None

    def communication_backend_name(self) -> str:
        return "gloo"

    def visible_devices_envvar(self) -> str:
        return "CUDA_VISIBLE_DEVICES"  # what Ray sets for its (fake) GPU resource

    @contextlib.contextmanager
    def nvtx_range(self, msg: str):
        yield

    def profiler_start(self) -> None:
        pass

    def profiler_stop(self) -> None:
        pass

    def ray_resource_name(self) -> str:
        return "GPU"

    def ray_noset_envvars(self) -> list[str]:
        return []

    def is_ipc_supported(self) -> bool:
        return False

    def cudart(self) -> Any:
        return None


# --- patches, applied when veRL imports the module -------------------------------------------------


def _register_rollout(base) -> None:
    base._ROLLOUT_REGISTRY[(ROLLOUT_NAME, "async")] = "verl_cpu_rollout.HFServerAdapter"


def _register_replica(replica) -> None:
    def load():
        from verl_cpu_rollout import HFReplica

        return HFReplica

    replica.RolloutReplicaRegistry.register(ROLLOUT_NAME, load)


def _load_valuehead_model(local_path, torch_dtype, model_config, trust_remote_code):
    """veRL's critic loader with the attention implementation of `model_config` (set through
    `critic.model.override_config.attn_implementation`) instead of a hard-coded flash_attention_2."""
    from transformers import AutoModelForTokenClassification

    return AutoModelForTokenClassification.from_pretrained(
        local_path, dtype=torch_dtype, config=model_config, trust_remote_code=trust_remote_code,
        attn_implementation=getattr(model_config, "_attn_implementation", None) or "sdpa")


def _patch_model_utils(model) -> None:
    model.load_valuehead_model = _load_valuehead_model


def _patch_distributed(distributed) -> None:
    original = distributed.initialize_global_process_group_ray
    if getattr(original, "__verl_cpu__", False):
        return

    @functools.wraps(original)
    def initialize_global_process_group_ray(timeout_second=None, backend=None):
        return original(timeout_second=timeout_second, backend=backend or "cpu:gloo")

    initialize_global_process_group_ray.__verl_cpu__ = True
    distributed.initialize_global_process_group_ray = initialize_global_process_group_ray


def _patch_fsdp_engine(impl) -> None:
    policy = impl.CPUOffloadPolicy
    if policy is None or getattr(policy, "__verl_cpu__", False):
        return

    class UnpinnedCPUOffloadPolicy(policy):
        """FSDP2's CPUOffloadPolicy, never pinning memory (veRL asks for pin_memory=True)."""

        __verl_cpu__ = True

        def __init__(self, pin_memory: bool = False):
            super().__init__(pin_memory=False)

    impl.CPUOffloadPolicy = UnpinnedCPUOffloadPolicy


on_import({
    "verl.workers.rollout.base": _register_rollout,
    "verl.workers.rollout.replica": _register_replica,
    "verl.utils.model": _patch_model_utils,
    "verl.utils.distributed": _patch_distributed,
    "verl.workers.engine.fsdp.transformer_impl": _patch_fsdp_engine,
})
