"""korllama: teach large language models to grade credit (or any table with a grading rubric).

The package reads as the pipeline it runs:
data -> prompts -> model -> train -> predict -> evaluate -> report / serve, with one validated RunConfig.
"""

__version__ = "0.1.0"
