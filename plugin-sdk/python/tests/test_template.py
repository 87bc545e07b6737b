"""The template (what `ovsb plugin new NAME --lang python` writes) and the example made from it."""

import pathlib
import subprocess
import sys

SDK = pathlib.Path(__file__).resolve().parent.parent
TEMPLATE = SDK / "template"
REPO = SDK.parent.parent
EXAMPLE = REPO / "examples" / "python-plugin"


def files():
    lines = (TEMPLATE / "FILES").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def render(name, sdk, wit):
    """What the Rust scaffold does with each file."""
    module = name.replace("-", "_")
    return {
        f: (TEMPLATE / f).read_text().replace("{{name}}", name).replace("{{module}}", module)
        .replace("{{sdk}}", sdk).replace("{{wit}}", wit)
        for f in files()
    }


def test_files_lists_every_template_file():
    on_disk = {p.name for p in TEMPLATE.iterdir() if p.name != "FILES" and p.name != "__pycache__"}
    assert set(files()) == on_disk
    assert {"app.py", "test_app.py", "requirements.lock", "build.sh", "test.sh", "README.md", ".gitignore"} <= on_disk


def test_the_template_pins_the_sdks_toolchain():
    assert (TEMPLATE / "requirements.lock").read_text() == (SDK / "requirements.lock").read_text()


def test_the_example_is_the_template_with_repository_relative_paths():
    rendered = render("python-plugin", "../../plugin-sdk/python", "../../wit")
    for f in ("build.sh", "test.sh", "requirements.lock", ".gitignore"):
        assert (EXAMPLE / f).read_text() == rendered[f], f"examples/python-plugin/{f} differs from the template"


def test_a_rendered_project_passes_its_own_tests(tmp_path):
    project = tmp_path / "demo-plugin"
    project.mkdir()
    for f, text in render("demo-plugin", str(SDK), str(REPO / "wit")).items():
        (project / f).write_text(text)
    assert "{{" not in "".join(render("demo-plugin", "s", "w").values())
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_app.py"],
        cwd=project,
        env={"PYTHONPATH": str(SDK), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "4 passed" in result.stdout
