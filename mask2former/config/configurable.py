"""``@configurable``: constructors with explicit arguments that can also be called with a config.

Follows Detectron2's convention: a class whose ``__init__`` is decorated may be constructed either
with explicit keyword arguments, or with a config node as first argument, in which case the class's
``from_config(cls, cfg, *args, **kwargs)`` maps config keys to ``__init__`` arguments. Config is read
only there, at the edge.
"""
import functools
import inspect

try:
    from detectron2.config import configurable
except ImportError:
    from fvcore.common.config import CfgNode as _CfgNode

    def _cfg_given(args: tuple, kwargs: dict) -> bool:
        """Whether a call passes a config node, first positionally or as ``cfg=``."""
        return any(isinstance(value, _CfgNode) for value in (*args[:1], kwargs.get("cfg")))

    def _init_kwargs(from_config, args: tuple, kwargs: dict) -> dict:
        """``from_config(*args, **kwargs)``; keyword arguments it does not take go straight through."""
        params = inspect.signature(from_config).parameters
        if next(iter(params)) != "cfg":
            raise TypeError(f"{from_config.__qualname__} must take 'cfg' as its first argument")
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            return from_config(*args, **kwargs)
        passthrough = {k: v for k, v in kwargs.items() if k not in params}
        resolved = from_config(*args, **{k: v for k, v in kwargs.items() if k in params})
        return {**resolved, **passthrough}

    def configurable(init_func=None, *, from_config=None):
        """Decorate ``__init__`` of a class with a ``from_config`` classmethod (or a function with
        ``from_config=``) so that it accepts ``cfg`` as its first argument.

        Raises:
            TypeError: used bare on anything but ``__init__``, or ``from_config`` does not start
                with ``cfg``.
            AttributeError: a config is passed to a class without ``from_config``.
        """
        if init_func is None:
            return functools.partial(_wrap_function, from_config=from_config)
        if not (inspect.isfunction(init_func) and init_func.__name__ == "__init__"):
            raise TypeError("@configurable without arguments decorates only __init__")

        @functools.wraps(init_func)
        def init_accepting_cfg(self, *args, **kwargs):
            if not _cfg_given(args, kwargs):
                return init_func(self, *args, **kwargs)
            reader = getattr(type(self), "from_config", None)
            if reader is None:
                raise AttributeError(f"{type(self).__name__} has no from_config classmethod")
            return init_func(self, **_init_kwargs(reader, args, kwargs))

        return init_accepting_cfg

    def _wrap_function(func, *, from_config):
        @functools.wraps(func)
        def call_accepting_cfg(*args, **kwargs):
            if _cfg_given(args, kwargs):
                return func(**_init_kwargs(from_config, args, kwargs))
            return func(*args, **kwargs)

        call_accepting_cfg.from_config = from_config
        return call_accepting_cfg
