"""The config schema shared by every ES config: every key the trainer reads, with defaults.

Each config file starts from `base()` and changes what it needs; `experiments/run.py` locks
the config, so a misspelled key on the command line is an error that suggests the right one.
"""

from ml_collections import ConfigDict


def base() -> ConfigDict:
    """The paper's ES + AWD settings (Qwen2.5-3B-Instruct on Countdown, N=30, T=500)."""
    c = ConfigDict()
    c.method = "es"
    c.workdir = ""  # required: the run directory

    c.model = ConfigDict()
    c.model.name = "qwen2.5-3b-instruct"  # preset, local HF dir, .gguf path or hub id
    c.model.compute_dtype = "bfloat16"  # masters stay float32
    c.model.cache_dir = ""  # "" = $ESAWD_CACHE_DIR or ~/.cache/esawd

    c.task = ConfigDict()
    c.task.name = "countdown"
    c.task.data_dir = ""  # folder with <task>/ (e.g. ../shared/data); "" = procedural/hub
    c.task.num_train = 200
    c.task.max_new_tokens = 1024
    c.task.train_split = "train"
    c.task.eval_split = "test"

    c.es = ConfigDict()
    c.es.population_size = 30
    c.es.sigma = 1e-3
    c.es.alpha = 5e-4
    c.es.antithetic = False
    c.es.num_iterations = 500
    c.es.seed = 0
    c.es.noise_sharing = "none"  # "shape" reproduces the reference's correlated noise
    c.es.members_per_batch = 1  # members vmapped together on one device
    c.es.num_devices = 0  # devices on the `pop` mesh axis (0: all)

    c.awd = ConfigDict()
    c.awd.kind = "l2"  # "none", "l1" or "l2"
    c.awd.lam = 10.0  # paper: l2 10, l1 0.01

    c.eval = ConfigDict()
    c.eval.interval = 50
    c.eval.num_examples = 200
    c.eval.batch_size = 64

    c.checkpoint = ConfigDict()
    c.checkpoint.interval = 50
    c.checkpoint.max_to_keep = 3

    c.log = ConfigDict()
    c.log.tensorboard = True
    c.log.wandb = False
    c.log.wandb_project = "esawd"
    c.log.progress = True

    c.export = True

    # Several processes (hosts): `enabled` calls jax.distributed.initialize with the values
    # given here; empty/negative values are auto-detected (SLURM, Open MPI, ...).
    c.distributed = ConfigDict()
    c.distributed.enabled = False
    c.distributed.coordinator_address = ""
    c.distributed.num_processes = 0
    c.distributed.process_id = -1
    # CPU only: split this process's CPU into this many JAX devices (0: JAX's default, one).
    # The population is spread over devices, so members then generate concurrently; on the
    # 2-core machine of docs/benchmarks.md, 2 devices evaluate a population 1.18x faster than
    # one device using both cores. No effect on the GPU backend; results are bitwise the same.
    c.distributed.cpu_devices = 0
    return c
