"""The one exception type a stage turns into a one-line error and a non-zero exit."""


class InputError(Exception):
    """Bad input the stage cannot go on with; the message names the file and the problem."""

    def __init__(self, path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")
