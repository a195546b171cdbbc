"""The commands as a user meets them: packaging, `--help`, quiet output."""

import os
import subprocess
import sys
import zipfile

import tensorflow as tf
from absl.testing import parameterized

from tf_mha import _startup

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Console script -> (module under tf_mha/cli, a flag its --help must list).
_COMMANDS = {
    "tf_mha_export": ("export_saved_model", "--output_dir"),
    "tf_mha_convert_tflite": ("convert_tflite", "--saved_model_dir"),
    "tf_mha_convert_litertlm": ("convert_litertlm", "--tokenizer"),
    "tf_mha_train": ("train", "--strategy"),
    "tf_mha_benchmark": ("benchmark", "--seq_lens"),
    "tf_mha_generate": ("generate", "--max_new_tokens"),
}
# Lines TensorFlow writes on its own (start-up, CUDA probe, converter, LiteRT).
_CHATTER = ("absl::InitializeLog", "cpu_feature_guard", "cuInit", "port.cc",
            "cudart_stub", "fully_quantize", "XNNPACK", "is deprecated",
            "Warning", "I0000", "W0000", "E0000",
            "accelerator_registry")  # LiteRT-LM's INFO lines, also at exit


def _env(**extra):
  env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
  return dict(env, **extra)


def _run(args, **kwargs):
  return subprocess.run(args, capture_output=True, text=True, cwd=_REPO,
                        env=_env(), timeout=600, **kwargs)


class PackagingTest(tf.test.TestCase):

  def test_wheel_holds_only_tf_mha_and_scripts_point_into_it(self):
    if not os.path.exists(os.path.join(_REPO, "setup.py")):
      self.skipTest("no setup.py here (a Bazel runfiles tree)")
    out = self.get_temp_dir()
    build = _run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                  "--no-build-isolation", "-q", "-w", out, _REPO])
    self.assertEqual(build.returncode, 0, build.stderr[-2000:])
    (wheel,) = [f for f in os.listdir(out) if f.endswith(".whl")]
    with zipfile.ZipFile(os.path.join(out, wheel)) as archive:
      names = archive.namelist()
      (entry_points,) = [n for n in names if n.endswith("entry_points.txt")]
      scripts = archive.read(entry_points).decode()
    tops = {name.split("/")[0] for name in names}
    self.assertEqual({t for t in tops if not t.endswith(".dist-info")}, {"tf_mha"})
    self.assertIn("tf_mha/cli/export_saved_model.py", names)
    for script, (module, _) in _COMMANDS.items():
      self.assertIn(f"{script} = tf_mha.cli.{module}:run", scripts)
    self.assertNotIn("tools", scripts)


class HelpTest(tf.test.TestCase, parameterized.TestCase):

  @parameterized.named_parameters(*((s, s, m, f) for s, (m, f) in _COMMANDS.items()))
  def test_console_script_help_shows_doc_and_flags(self, script, module, flag):
    # The console script pip installed beside this Python, or else the
    # wrapper pip writes for one: its own module is `__main__`, with no
    # docstring and no flags.
    wrapper = os.path.join(os.path.dirname(sys.executable), script)
    if not os.path.exists(wrapper):
      wrapper = os.path.join(self.get_temp_dir(), script)
      with open(wrapper, "w") as f:
        f.write(f"import sys\nfrom tf_mha.cli.{module} import run\n"
                "sys.exit(run())\n")
    for command in ([sys.executable, wrapper, "--help"],
                    [sys.executable, "-m", f"tools.{module}", "--help"]):
      result = _run(command)  # absl's --help exits with 1
      self.assertIn(flag, result.stdout, result.stderr[-2000:])
      self.assertIn(f"`{script}`", result.stdout)  # the module docstring
      self.assertNotIn("USAGE:", result.stdout)


  def test_help_and_bad_flags_answer_without_loading_tensorflow(self):
    # A `tensorflow` that cannot be imported comes first on the path: each
    # command answers from its flags alone, as fast as Python starts.
    fake = self.get_temp_dir()
    os.makedirs(os.path.join(fake, "tensorflow"))
    with open(os.path.join(fake, "tensorflow", "__init__.py"), "w") as f:
      f.write("raise ImportError('tensorflow was imported')\n")
    env = _env(PYTHONPATH=os.pathsep.join([fake, _REPO]))
    cases = [([f"tools.{module}", "--help"], flag)
             for module, flag in _COMMANDS.values()]
    cases += [(["tools.train", "--steps=0"], "--steps must be a positive integer"),
              (["tools.benchmark", "--seq_lens=abc"], "--seq_lens takes positive"),
              (["tools.generate", "--model=m", "--prompt=a", "--top_p=0"],
               "`top_p` must be in (0, 1]")]
    for args, expected in cases:
      result = subprocess.run([sys.executable, "-m", *args], capture_output=True,
                              text=True, cwd=_REPO, env=env, timeout=60)
      self.assertIn(expected, result.stdout + result.stderr, args)
      self.assertNotIn("tensorflow was imported", result.stderr, args)
      self.assertNotIn("Traceback", result.stderr, args)


class QuietOutputTest(tf.test.TestCase):

  def test_which_processes_are_commands(self):
    self.assertTrue(_startup.is_command("/usr/local/bin/tf_mha_export"))
    self.assertTrue(_startup.is_command("/repo/tools/train.py"))
    self.assertTrue(_startup.is_command("/site/tf_mha/cli/benchmark.py"))
    self.assertFalse(_startup.is_command("/repo/tools/run_signature.py"))
    self.assertFalse(_startup.is_command("/home/me/train.py"))
    self.assertFalse(_startup.is_command("-c"))
    argv = ["/usr/local/bin/tf_mha_train", "--steps=3"]
    self.assertTrue(_startup.wants_quiet(argv, {}))
    self.assertFalse(_startup.wants_quiet(argv + ["--verbosity=0"], {}))
    self.assertFalse(_startup.wants_quiet(argv, {"TF_CPP_MIN_LOG_LEVEL": "0"}))

  def test_main_job_prints_its_report_and_no_tensorflow_chatter(self):
    out_dir = self.get_temp_dir()
    result = _run([sys.executable, "-m", "tools.export_saved_model",
                   f"--output_dir={out_dir}", "--epochs=2",
                   "--quantize=int8"])  # the float32 files: test_export, test_generator
    self.assertEqual(result.returncode, 0, result.stderr[-3000:])
    text = result.stdout + result.stderr
    for chatter in _CHATTER:
      self.assertNotIn(chatter, text)
    self.assertIn("Training the demo model", result.stderr)
    self.assertIn("epoch 2/2", result.stderr)
    self.assertIn("Converting to TFLite (int8)", result.stderr)
    self.assertIn("demo accuracy (held-out, Keras)", result.stdout)
    self.assertIn("TFLite (int8)", result.stdout)
    self.assertIn("Training the generator", result.stderr)
    self.assertIn("generator exact-match", result.stdout)
    self.assertIn("TFLite prefill/decode (int8)", result.stdout)
    self.assertIn("tokens/s in LiteRT", result.stdout)
    self.assertLess(len(text.splitlines()), 45)  # one screen
    # A refusal is shown, although the command hides standard error.
    again = _run([sys.executable, "-m", "tools.export_saved_model",
                  f"--output_dir={out_dir}", "--version=1", "--demos=generator"])
    self.assertEqual(again.returncode, 1)
    self.assertIn("Refused:", again.stderr)
    self.assertIn("already exists", again.stderr)

  def test_verbosity_lets_tensorflow_logs_through(self):
    args = [sys.executable, "-m", "tools.convert_tflite",
            "--saved_model_dir=/nonexistent", "--output_file=/tmp/x.tflite"]
    quiet, verbose = _run(args), _run(args + ["--verbosity=0"])
    for result in (quiet, verbose):
      self.assertEqual(result.returncode, 1)
      self.assertIn("`saved_model_dir` holds no SavedModel (no saved_model.pb). "
                    "Received: saved_model_dir='/nonexistent'", result.stderr)
    self.assertNotIn("absl::InitializeLog", quiet.stderr)
    self.assertIn("absl::InitializeLog", verbose.stderr)

  def test_a_crash_shows_the_hidden_log(self):
    code = ("import os, sys\n"
            "from tf_mha import _startup\n"
            "with _startup.hidden(fds=(1, 2)) as (out, err):\n"
            "  os.write(2, b'native noise\\n')\n"
            "  out.write('progress\\n')\n"
            "  if sys.argv[1] == 'fail':\n"
            "    raise RuntimeError('boom')\n")
    ok = _run([sys.executable, "-c", code, "pass"])
    self.assertEqual(ok.returncode, 0, ok.stderr)
    self.assertEqual(ok.stdout, "progress\n")
    self.assertNotIn("native noise", ok.stderr)
    failed = _run([sys.executable, "-c", code, "fail"])
    self.assertNotEqual(failed.returncode, 0)
    self.assertIn("native noise", failed.stderr)
    self.assertIn("RuntimeError: boom", failed.stderr)


if __name__ == "__main__":
  tf.test.main()
