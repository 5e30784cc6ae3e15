"""What every config starts from: the schema's defaults (`esawd.settings`) as a ConfigDict.

`experiments/run.py` locks the config, so a misspelled key on the command line is an error
that suggests the right one. Keys and defaults are written once, in `esawd.settings`.
"""

from ml_collections import ConfigDict

from esawd import settings


def base(method: str = "es") -> ConfigDict:
    """The defaults of `method` ("es": the paper's ES + L2 AWD, N=30, T=500; "grpo")."""
    return settings.config_dict(method)


def paper_base(method: str = "es") -> ConfigDict:
    """`base` on the paper's model and precision: Qwen2.5-3B-Instruct computed in bfloat16."""
    c = base(method)
    c.model.name = "qwen2.5-3b-instruct"
    c.model.compute_dtype = "bfloat16"
    return c
