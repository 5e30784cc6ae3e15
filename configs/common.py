"""What every config starts from: the schema's defaults (`esawd.settings`) as a ConfigDict.

`experiments/run.py` locks the config, so a misspelled key on the command line is an error
that suggests the right one. Keys and defaults are written once, in `esawd.settings`.
"""

from ml_collections import ConfigDict

from esawd import settings

# The compute dtype each method's reference implementation ran in. ES: vLLM engines created
# with `--precision float16` (es.py's default, and run.sh's). GRPO: verl's defaults, which the
# grpo_experiments/*.sh scripts leave alone (bfloat16 rollouts and FSDP mixed precision with
# bfloat16 parameters in the forward pass and float32 masters).
PAPER_DTYPE = {"es": "float16", "grpo": "bfloat16"}


def base(method: str = "es") -> ConfigDict:
    """The defaults of `method` ("es": the paper's ES + L2 AWD, N=30, T=500; "grpo")."""
    return settings.config_dict(method)


def paper_base(method: str = "es") -> ConfigDict:
    """`base` on the paper's model and precision: Qwen2.5-3B-Instruct, computed in float16 for
    ES (the reference's vLLM `--precision float16`) and in bfloat16 for GRPO (verl's default).

    Parameters stay float32 masters here and are cast for each forward pass. The reference's ES
    holds its weights in float16 itself (vLLM's dtype), so each of its updates is also rounded
    to float16; that rounding is not reproduced.
    """
    c = base(method)
    c.model.name = "qwen2.5-3b-instruct"
    c.model.compute_dtype = PAPER_DTYPE[method]
    return c
