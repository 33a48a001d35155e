"""The named configs shipped with jpeglm (installed as the package data `jpeglm.configs`):
model/ (Llama shapes), train/, deepspeed/, vq/, eval/. `jpeglm.config.config_path(kind, name)`
resolves a name here, so a named config works the same from a checkout and from a wheel."""
