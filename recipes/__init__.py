"""Recipes: commands that chain the project's entry points into one result, each with its profiles as YAML.

    python -m recipes.demo            # the whole method in miniature (`make demo`); profiles/demo*.yaml
    python -m recipes.teacher         # the teacher: cold-start SFT, then GDSO
    python -m recipes.demo_tables     # the teacher, student and DRaFT tables over the seeds of demo runs
    python -m recipes.student_table   # RISD's ablations and the CLIP-sized student on a demo run's teacher cache
    python -m recipes.world_bases     # the world's shipped models in world/ (`make world-bases`)

`training/` trains reward models and `pipelines/` tunes generators, one entry point per job; a recipe only decides
which of them run, in which order, with which settings (a training config of `training/configs` or
`pipelines/configs` plus the overrides of its profile), and gathers their results.
"""
