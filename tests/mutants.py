"""`make mutants`: plant known, plausible bugs one at a time in a copy of the code and check the tests catch each.

    python -m tests.mutants                 # every mutant
    python -m tests.mutants resume_restarts_from_zero opd_forward_kl     # some of them

First the chosen tests run on an unmutated copy: if that control fails, every "killed" below would mean nothing, so
the script stops. Then each mutant replaces one snippet of one file (the snippet must occur exactly once, so a
refactor that moves it makes the mutant fail loudly instead of silently testing nothing), runs the tests that should
catch it, and restores the file. A mutant is killed when those tests fail. Exit status 1 if any survived.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mutant:
    name: str
    path: str
    original: str
    mutated: str
    tests: tuple[str, ...]  # pytest node ids or files, relative to the repository root


TEACHER = "tests/test_training_teacher.py"
STUDENT = "tests/test_training_student.py"
LOSSES = "tests/test_training_losses.py"
STATE = "tests/test_training_state.py"

MUTANTS = (
    Mutant("resume_restarts_from_zero", "training/state.py",
           "        return latest_checkpoint(self.directory)\n", "        return None\n",
           (STATE, f"{TEACHER}::test_sft_resume_runs_only_the_remaining_steps_and_equals_an_uninterrupted_run",
            f"{STUDENT}::test_clip_student_resume_runs_only_the_remaining_steps_and_equals_an_uninterrupted_run",
            "tests/test_pipelines.py::test_reward_finetune_runs_saves_and_resumes",
            "tests/test_pipelines.py::test_tiny_generator_trains_saves_and_resumes")),
    Mutant("resume_skips_the_accelerate_state", "training/state.py",
           "        self.accelerator.load_state(str(checkpoint))\n", "        pass\n",
           (STATE, f"{TEACHER}::test_sft_resume_runs_only_the_remaining_steps_and_equals_an_uninterrupted_run")),
    Mutant("resume_takes_the_oldest_checkpoint", "training/state.py",
           "    return found[-1]\n", "    return found[0]\n", (STATE,)),
    Mutant("reward_trainers_ignore_resume", "training/trainer.py",
           "        progress = self.checkpoints.resume() if config.resume else None\n",
           "        progress = None\n",
           (f"{TEACHER}::test_sft_resume_runs_only_the_remaining_steps_and_equals_an_uninterrupted_run",)),
    Mutant("pretraining_ignores_resume", "training/state.py",
           "    progress = (checkpoints.resume() if config.resume else None) or Progress()\n",
           "    progress = Progress()\n",
           ("tests/test_pretrain_base.py::test_resume_continues_exactly",)),
    Mutant("risd_clip_ignores_resume", "training/risd_clip.py",
           "    progress = (checkpoints.resume() if config.resume else None) or Progress()\n",
           "    progress = Progress()\n",
           (f"{STUDENT}::test_clip_student_resume_runs_only_the_remaining_steps_and_equals_an_uninterrupted_run",)),
    Mutant("reward_finetune_ignores_resume", "pipelines/reward_finetune.py",
           "        progress = self.checkpoints.resume() if config.resume else None\n",
           "        progress = None\n",
           ("tests/test_pipelines.py::test_reward_finetune_runs_saves_and_resumes",)),
    Mutant("tiny_generator_ignores_resume", "pipelines/train_tiny_generator.py",
           "checkpoints, (checkpoints.resume() if resume else None) or Progress()\n", "checkpoints, Progress()\n",
           ("tests/test_pipelines.py::test_tiny_generator_trains_saves_and_resumes",)),
    Mutant("sft_every_process_takes_the_whole_batch", "training/sft.py",
           "        return [self.units[i] for i in chosen.tolist()][self.rank::self.world_size]\n",
           "        return [self.units[i] for i in chosen.tolist()]\n",
           (f"{TEACHER}::test_two_processes_match_one[training.sft-sft_args-loss]",)),
    Mutant("gdso_every_process_takes_the_whole_batch", "training/gdso.py",
           "        return units[self.rank::self.world_size]\n", "        return units\n",
           (f"{TEACHER}::test_two_processes_match_one[training.gdso-gdso_args-pointwise]",)),
    Mutant("bradley_terry_every_process_takes_the_whole_batch", "training/scalar_baselines.py",
           "        local = [self.pairs[i] for i in chosen.tolist()][self.rank::self.world_size]\n",
           "        local = [self.pairs[i] for i in chosen.tolist()]\n",
           (f"{TEACHER}::test_two_processes_match_one[training.bradley_terry-scalar_args-loss]",)),
    Mutant("rewarddance_every_process_takes_the_whole_batch", "training/scalar_baselines.py",
           "        local = [units[i] for i in chosen.tolist()][self.rank::self.world_size]\n",
           "        local = [units[i] for i in chosen.tolist()]\n",
           (f"{TEACHER}::test_two_processes_match_one[training.rewarddance-scalar_args-loss]",)),
    Mutant("risd_every_process_takes_the_whole_batch", "training/risd.py",
           "        return [self.units[i] for i in chosen][self.rank::self.world_size]\n",
           "        return [self.units[i] for i in chosen]\n",
           (f"{STUDENT}::test_two_processes_match_one[training.risd-risd_config-keys0]",)),
    Mutant("opd_every_process_takes_the_whole_batch", "training/opd.py",
           "for u, i in enumerate(chosen.tolist())][self.rank::self.world_size]\n",
           "for u, i in enumerate(chosen.tolist())]\n",
           (f"{STUDENT}::test_two_processes_match_one[training.opd-opd_config-keys1]",)),
    Mutant("risd_clip_every_process_takes_the_whole_batch", "training/risd_clip.py",
           "        local_units = chosen_units[rank::world]\n", "        local_units = chosen_units\n",
           (f"{STUDENT}::test_clip_student_two_processes_match_one",)),
    Mutant("bradley_terry_prefers_the_worse_image", "training/objectives.py",
           "    return -F.logsigmoid(score_a - score_b)\n", "    return -F.logsigmoid(score_b - score_a)\n",
           (LOSSES,)),
    Mutant("bradley_terry_trainer_swaps_the_pair", "training/scalar_baselines.py",
           "        better, worse = scores[:len(local)], scores[len(local):]\n",
           "        worse, better = scores[:len(local)], scores[len(local):]\n",
           (f"{TEACHER}::test_bradley_terry_feeds_the_better_image_first",)),
    Mutant("rewarddance_trained_towards_no", "training/objectives.py",
           "    return -(target * yes_no_log_probs[:, 1] + (1 - target) * yes_no_log_probs[:, 0])\n",
           "    return -(target * yes_no_log_probs[:, 0] + (1 - target) * yes_no_log_probs[:, 1])\n",
           (LOSSES,)),
    Mutant("opd_forward_kl", "training/objectives.py",
           "    return (student_log_probs.exp() * (student_log_probs - teacher_log_probs)).sum(-1)\n",
           "    return (teacher_log_probs.exp() * (teacher_log_probs - student_log_probs)).sum(-1)\n",
           (LOSSES,)),
    Mutant("gdso_policy_gradient_sign", "training/objectives.py",
           "    return -(objective * mask).sum()\n", "    return (objective * mask).sum()\n",
           (LOSSES,)),
    Mutant("ppo_ratio_to_the_previous_epoch", "training/gdso.py",
           "            old = [t[\"behaviour\"] for t in terms]  # the rollout-time values, handed on unchanged\n",
           "            old = [dict(t[\"behaviour\"], log_probs=t[\"log_probs\"]) for t in terms]\n",
           (f"{LOSSES}::test_every_ppo_epoch_uses_the_rollout_time_policy",)),
    Mutant("teacher_cache_resume_drops_entries", "training/state.py",
           "                        values.append(json.loads(line))\n",
           "                        values.append(json.loads(line))\n                        break\n",
           (f"{STUDENT}::test_cache_miss_then_hit", f"{STUDENT}::test_interrupted_cache_resumes_to_the_same_result",
            "tests/test_annotate.py")),
    Mutant("resize_backward_drops_the_255_scale", "zreward_diffusers/preprocessing/resize.py",
           "        return grad * 255.0, None, None\n", "        return grad, None, None\n",
           ("tests/test_preprocessing_resize.py",)),
    Mutant("save_replaces_folders_it_did_not_write", "zreward_diffusers/saving.py",
           "    if target.is_dir() and not is_ours(target) and any(target.iterdir()) and not overwrite:\n",
           "    if False:\n",
           ("tests/test_saving.py",
            "tests/test_cli.py::test_create_tiny_never_destroys_a_folder_it_did_not_write")),
    Mutant("load_ignores_an_interrupted_save", "zreward_diffusers/checkpoint.py",
           "        recover_directory(path)  # a save killed between its renames: the last complete state goes back "
           "in place\n",
           "        pass\n",
           ("tests/test_checkpoint.py::test_a_save_killed_between_its_renames_loads_the_new_checkpoint",)),
    Mutant("rerun_starts_over_a_finished_run", "training/state.py",
           "    if previous and not (config.resume or config.overwrite):\n", "    if False:\n",
           (f"{TEACHER}::test_a_rerun_without_resume_refuses_and_overwrite_starts_over",
            "tests/test_pipelines.py::test_tiny_generator_trains_saves_and_resumes")),
    Mutant("prompts_may_carry_special_tokens", "zreward_diffusers/image_inputs.py",
           "        found = special_tokens.search(prompt) if special_tokens is not None else None\n",
           "        found = None\n",
           ("tests/test_input_hardening.py",)),
    Mutant("pickles_beside_weights_are_loaded", "zreward_diffusers/checkpoint.py",
           "    if not pickles:\n", "    if True:\n",
           ("tests/test_checkpoint_hardening.py",)),
    Mutant("generator_latents_left_unscaled", "pipelines/train_tiny_generator.py",
           "        vae.register_to_config(scaling_factor=float(1.0 / latents.std()))\n", "        pass\n",
           ("tests/test_pipelines.py::test_world_generator_options_build_what_they_say_and_train",)),
    Mutant("generator_v_prediction_learns_the_noise", "pipelines/train_tiny_generator.py",
           "    if scheduler.config.prediction_type == \"epsilon\":\n", "    if True:\n",
           ("tests/test_pipelines.py::test_world_generator_options_build_what_they_say_and_train",)),
    Mutant("accuracy_interval_resamples_pairs_not_prompts", "zreward_diffusers/evaluation.py",
           "    result = metrics.bootstrap_ci(accuracy, credit, groups, num_resamples, confidence, seed)\n",
           "    result = metrics.bootstrap_ci(accuracy, credit, None, num_resamples, confidence, seed)\n",
           ("tests/test_evaluation.py",)),
    Mutant("score_output_reward_ignores_kappa_and_normalisation", "zreward_diffusers/loss.py",
           "        return replace(output, reward=self._shape(output, prompts, update=False))\n",
           "        return output\n",
           ("tests/test_clients.py",)),
    Mutant("reward_fn_reads_unit_images_as_minus_one_to_one", "zreward_diffusers/loss.py",
           '        return self._reward_of_unit(to_unit_range(pixels, "0,1"), _prompt_list(prompts))\n',
           '        return self._reward_of_unit(self._unit_images(pixels), _prompt_list(prompts))\n',
           ("tests/test_clients.py",)),
    Mutant("plain_vlm_is_refused_instead_of_read_zero_shot", "zreward_diffusers/checkpoint.py",
           "    if (checkpoint_dir / CONFIG_NAME).is_file() or not path.is_file():\n",
           "    if True:\n",
           ("tests/test_zero_shot.py",)),
    Mutant("batch_scoring_moves_the_running_statistics", "zreward_diffusers/loss.py",
           "        reward = self._shape(whole, prompts, update=False).float().cpu()\n",
           "        reward = self._shape(whole, prompts).float().cpu()\n",
           ("tests/test_clients.py",)),
    Mutant("cvar_counts_each_level_before_taking_it", "zreward_diffusers/distributions.py",
           "    cdf_below = probs.cumsum(dim=-1) - probs\n",
           "    cdf_below = probs.cumsum(dim=-1)\n",
           ("tests/test_reward_objectives.py",)),
    Mutant("groupwise_reward_compares_an_image_with_itself", "zreward_diffusers/loss.py",
           "prompts[i] == prompts[j] and i != j",
           "prompts[i] == prompts[j]",
           ("tests/test_reward_objectives.py",)),
    Mutant("grad_flow_calls_a_pil_round_trip_a_detach", "zreward_diffusers/grad_flow.py",
           '                    event.kind = "PIL / NumPy round trip"\n',
           "                    pass\n",
           ("tests/test_grad_flow.py",)),
    Mutant("hpdv2_rule_counts_predicted_ties_as_inversions", "zreward_diffusers/bench.py",
           "    discordant = (outcome * np.sign(score_a - score_b)) < 0\n",
           "    discordant = (outcome * np.sign(score_a - score_b)) <= 0\n",
           ("tests/test_bench.py",)),
    Mutant("pickapic_threshold_ignores_the_validation_split", "zreward_diffusers/bench.py",
           '            threshold = pickapic_threshold(held_pairs["probability_a"], held_pairs["outcome"])\n',
           "            threshold = 0.0\n",
           ("tests/test_bench.py",)),
    Mutant("annotate_keeps_inconsistent_rationales", "training/annotate.py",
           '    return "kept" if abs(expected - label) <= tolerance else "inconsistent"\n',
           '    return "kept"\n',
           ("tests/test_annotate.py",)),
    Mutant("judge_score_lands_on_the_lower_level_only", "training/judge.py",
           "    probs[lower], probs[upper] = 1.0 - weight, weight\n",
           "    probs[lower] = 1.0\n",
           ("tests/test_judge.py",)),
)


def copy_repository(destination: Path) -> None:
    """The files git tracks or would track (untracked, not ignored), as they are in the working tree."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, check=True,
                            capture_output=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = REPO / name
        if source.is_file():
            target = destination / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)


def run_tests(copy: Path, tests: tuple[str, ...]) -> tuple[bool, float, str]:
    """`(passed, seconds, last lines)` of pytest on `tests` in `copy` (its code first on the path)."""
    env = dict(os.environ, PYTHONPATH=str(copy), HF_HUB_OFFLINE="1", OMP_NUM_THREADS=os.environ.get(
        "OMP_NUM_THREADS", "2"))
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests],
                            cwd=copy, env=env, capture_output=True, text=True)
    tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-3:])
    return result.returncode == 0, time.perf_counter() - started, tail


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="mutants to run (default: all)")
    args = parser.parse_args(argv)
    unknown = set(args.names) - {mutant.name for mutant in MUTANTS}
    if unknown:
        parser.error(f"unknown mutants {sorted(unknown)}; known: {[mutant.name for mutant in MUTANTS]}")
    chosen = [mutant for mutant in MUTANTS if not args.names or mutant.name in args.names]
    with tempfile.TemporaryDirectory(prefix="zreward-mutants-") as temporary:
        copy = Path(temporary) / "repo"
        copy_repository(copy)
        tests = tuple(dict.fromkeys(test for mutant in chosen for test in mutant.tests))
        passed, seconds, tail = run_tests(copy, tests)
        print(f"control (no mutant): {'passed' if passed else 'FAILED'} in {seconds:.0f} s", flush=True)
        if not passed:
            print(tail)
            print("the unmutated code fails the chosen tests: no mutant result would mean anything")
            return 2
        survivors = []
        for mutant in chosen:
            path = copy / mutant.path
            text = path.read_text()
            if text.count(mutant.original) != 1:
                print(f"{mutant.name}: its snippet occurs {text.count(mutant.original)} times in {mutant.path}")
                return 2
            path.write_text(text.replace(mutant.original, mutant.mutated))
            try:
                passed, seconds, _ = run_tests(copy, mutant.tests)
            finally:
                path.write_text(text)
            print(f"{mutant.name:<52} {'SURVIVED' if passed else 'killed':<9} {seconds:5.0f} s", flush=True)
            if passed:
                survivors.append(mutant.name)
        print(f"{len(chosen) - len(survivors)} of {len(chosen)} mutants killed"
              + (f"; survived: {', '.join(survivors)}" if survivors else ""))
        return 1 if survivors else 0


if __name__ == "__main__":
    sys.exit(main())
