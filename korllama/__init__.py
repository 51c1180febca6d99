"""korllama: teach large language models to grade credit (or any table with a grading rubric).

The package reads as the pipeline it runs:
data -> prompts -> model -> train -> predict -> evaluate -> report / serve, with one validated RunConfig.
"""

import logging

__version__ = "0.1.0"

# bitsandbytes, which peft imports, logs on AVX512-BF16 CPUs that an optional fused kernel could not be fetched from
# the hub; korllama never uses that kernel (korllama.quantize.keep_trainable), so the line would only alarm.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
