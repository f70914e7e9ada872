"""lt_dist.runinfo: the command and commit a run records, against a real git repository in tmp_path."""
import shlex
import subprocess

from lt_dist.runinfo import command_line, git_commit


def test_command_line_reads_back_as_the_same_arguments():
    argv = ["launch/train_repr.py", "--data", "shards/my set", "--loss-param", "gamma=2", "--note", "it's"]
    assert shlex.split(command_line(argv)) == ["python", *argv]


def git(folder, *args):
    subprocess.run(["git", "-C", str(folder), *args], check=True, capture_output=True)


def test_git_commit_names_the_checkout_and_says_when_it_differs(tmp_path):
    assert git_commit(str(tmp_path)) is None  # not a checkout
    git(tmp_path, "init", "-q")
    (tmp_path / "code.py").write_text("x = 1\n")
    git(tmp_path, "add", "code.py")
    git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "first")
    head = subprocess.run(["git", "-C", str(tmp_path), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert git_commit(str(tmp_path / "code.py")) == head
    (tmp_path / "notes.txt").write_text("untracked files do not make it dirty")
    assert git_commit(str(tmp_path)) == head
    (tmp_path / "code.py").write_text("x = 2\n")
    assert git_commit(str(tmp_path)) == head + "+dirty"
