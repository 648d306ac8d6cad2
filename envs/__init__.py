"""Scenarios for robust multi-agent RL under state shocks, and their adapters.

``import envs`` registers every scenario:

* in Gymnasium, joint-control view: ``gymnasium.make("envs:AAJR/Commons-v0")``, and the native batched
  vector env: ``gymnasium.make_vec("envs:AAJR/Commons-v0", num_envs=n,
  vectorization_mode="vector_entry_point")`` (also ``AAJR/Routing-v0`` and ``AAJR/Compute-v0``);
* in PettingZoo's registry: ``pettingzoo.make("parallel", "AAJR/Commons-v0")`` and
  ``pettingzoo.make("aec", "AAJR/Commons-v0")``.

The batched torch simulators are built with ``envs.make_scenario(name, **kwargs)`` and stepped with
``envs.TorchVectorEnv``; see ``envs.core`` for the protocol.
"""

import gymnasium
import pettingzoo

from envs import commons, compute, routing
from envs.core import SCENARIOS, Scenario, ScenarioConfig, StepResult, make_generator, make_scenario
from envs.vector import TorchVectorEnv, VectorStep

GYM_IDS = {name: f"AAJR/{name.capitalize()}-v0" for name in SCENARIOS}


def _register() -> None:
    for name, env_id in GYM_IDS.items():
        if env_id not in gymnasium.registry:
            gymnasium.register(
                id=env_id,
                entry_point="envs.gym_env:JointEnv",
                vector_entry_point="envs.gym_env:JointVectorEnv",
                kwargs={"scenario": name},
            )
        if env_id not in pettingzoo.parallel_registry:
            pettingzoo.register("parallel", env_id, entry_point=f"envs.{name}:parallel_env")
        if env_id not in pettingzoo.aec_registry:
            pettingzoo.register("aec", env_id, entry_point=f"envs.{name}:env")


_register()

__all__ = [
    "GYM_IDS",
    "SCENARIOS",
    "Scenario",
    "ScenarioConfig",
    "StepResult",
    "TorchVectorEnv",
    "VectorStep",
    "commons",
    "compute",
    "make_generator",
    "make_scenario",
    "routing",
]
