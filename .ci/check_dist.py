"""Checks what `python -m build` put in the sdist and the wheel(s) in a directory.

Usage: python .ci/check_dist.py DIST_DIR   (run from the checkout)

* The sdist holds exactly this checkout's source files (`git ls-files`, plus
  files not yet added) minus what only the repository needs, plus the
  metadata setuptools writes: so nothing a build or the tests need is
  missing, and nothing generated or machine-specific (.c, .so, build/,
  caches) slips in.
* Each wheel holds the package's modules, its typing files, exactly one
  compiled engine and the license, and nothing else.
"""

import fnmatch
import glob
import os
import subprocess
import sys
import tarfile
import zipfile

#: Repository files that are not part of the source distribution.
REPOSITORY_ONLY = [".ci/*", ".github/*", ".gitignore"]
#: Files setuptools writes into every sdist.
SDIST_METADATA = ["PKG-INFO", "setup.cfg", "chatcore.egg-info/*"]


def fail(message: str) -> None:
    sys.exit("check_dist: " + message)


def matches(path: str, patterns: list) -> bool:
    return any(fnmatch.fnmatch(path, pattern) for pattern in patterns)


def source_files() -> set:
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        check=True,
        stdout=subprocess.PIPE,
        text=True,
    ).stdout.split("\n")
    # A file deleted but not yet committed is still listed: keep real files only.
    return {path for path in listed if path and os.path.isfile(path) and not matches(path, REPOSITORY_ONLY)}


def check_sdist(path: str) -> set:
    with tarfile.open(path) as archive:
        names = [member.name for member in archive.getmembers() if member.isfile()]
    top = os.path.basename(path)[: -len(".tar.gz")] + "/"
    if not all(name.startswith(top) for name in names):
        fail("%s: files outside %s" % (path, top))
    files = {name[len(top) :] for name in names if not matches(name[len(top) :], SDIST_METADATA)}
    expected = source_files()
    if files != expected:
        fail(
            "%s differs from the checkout's source files:\n  missing: %s\n  unexpected: %s"
            % (path, sorted(expected - files), sorted(files - expected))
        )
    return files


def check_wheel(path: str, sdist_files: set) -> None:
    with zipfile.ZipFile(path) as archive:
        names = set(archive.namelist())
    dist_info = {name for name in names if name.split("/")[0].endswith(".dist-info")}
    package = names - dist_info
    modules = {name for name in sdist_files if name.startswith("chatcore/")}
    engines = {
        name
        for name in package
        if fnmatch.fnmatch(name, "chatcore/_framing_c.*.so") or fnmatch.fnmatch(name, "chatcore/_framing_c.*.pyd")
    }
    if len(engines) != 1:
        fail("%s: expected one compiled engine, found %s" % (path, sorted(engines)))
    if package - engines != modules:
        fail(
            "%s: package files differ from the sdist's chatcore/:\n  missing: %s\n  unexpected: %s"
            % (path, sorted(modules - package), sorted(package - engines - modules))
        )
    if not any(name.endswith(".dist-info/licenses/LICENSE") for name in dist_info):
        fail("%s: no LICENSE in its .dist-info" % path)


def main(dist: str) -> None:
    sdists = glob.glob(os.path.join(dist, "*.tar.gz"))
    wheels = glob.glob(os.path.join(dist, "*.whl"))
    if len(sdists) != 1 or not wheels:
        fail("expected one sdist and some wheels in %s, found %s" % (dist, sorted(os.listdir(dist))))
    sdist_files = check_sdist(sdists[0])
    for wheel in wheels:
        check_wheel(wheel, sdist_files)
    print(
        "check_dist: %s: %d source files; %s: modules, typing files, one engine, LICENSE"
        % (os.path.basename(sdists[0]), len(sdist_files), ", ".join(os.path.basename(wheel) for wheel in wheels))
    )


if __name__ == "__main__":
    main(sys.argv[1])
