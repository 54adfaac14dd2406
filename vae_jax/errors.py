"""The error every configuration check of the library raises."""


class ConfigError(ValueError):
  """A setting is out of range or conflicts with another.

  `parameter` names the setting as the library spells it (a dataclass field
  or a function argument), so that a runner can tell its user which flag to
  change; the message names it too.
  """

  def __init__(self, parameter: str, message: str):
    super().__init__(message)
    self.parameter = parameter
