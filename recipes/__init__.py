"""Recipes: commands that chain the project's entry points into one result, each with its profiles as YAML.

    python -m recipes.demo            # the whole method in miniature (`make demo`); profiles/demo*.yaml
    python -m recipes.teacher         # the teacher: cold-start SFT, then GDSO
    python -m recipes.teacher_table   # the teacher table: SFT, GRPO, Bradley-Terry, RewardDance, GDSO at equal budget
    python -m recipes.student_table   # the student table: RISD against its teacher and OPD, with RISD's ablations
    python -m recipes.world_bases     # the world's shipped models in world/ (`make world-bases`)

`training/` trains reward models and `pipelines/` tunes generators, one entry point per job; a recipe only decides
which of them run, in which order, with which settings (a training config of `training/configs` or
`pipelines/configs` plus the overrides of its profile), and gathers their results.
"""
