"""Files a run leaves: the run folder, ``arch.json``, and atomic JSON / torch writes."""
from nasseg.artifacts.arch_file import ARCH_FORMAT, build_derived, read_arch, write_arch
from nasseg.artifacts.files import FileFormatError, atomic_path, read_json, save_torch, write_json
from nasseg.artifacts.run_folder import RunFolder, RunFolderError, fresh_run_dir

__all__ = ["RunFolder", "RunFolderError", "fresh_run_dir", "ARCH_FORMAT", "read_arch",
           "write_arch", "build_derived", "atomic_path", "write_json", "read_json", "save_torch",
           "FileFormatError"]
