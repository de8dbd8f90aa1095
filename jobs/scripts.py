"""The Lua scripts paylinks runs in Redis, read from the package's `lua/` folders."""

from importlib.resources import files


def lua(package: str, name: str) -> str:
    return files(package).joinpath("lua", f"{name}.lua").read_text()
