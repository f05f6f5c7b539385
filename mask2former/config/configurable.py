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

    def _called_with_cfg(*args, **kwargs) -> bool:
        if args and isinstance(args[0], _CfgNode):
            return True
        return isinstance(kwargs.get("cfg"), _CfgNode)

    def _get_args_from_config(from_config, *args, **kwargs) -> dict:
        signature = inspect.signature(from_config)
        if next(iter(signature.parameters)) != "cfg":
            raise TypeError(f"{from_config.__qualname__} must take 'cfg' as its first argument")
        accepts_any = any(p.kind == p.VAR_KEYWORD for p in signature.parameters.values())
        if accepts_any:
            return from_config(*args, **kwargs)
        known = set(signature.parameters)
        extra = {k: kwargs.pop(k) for k in list(kwargs) if k not in known}
        explicit = from_config(*args, **kwargs)
        explicit.update(extra)
        return explicit

    def configurable(init_func=None, *, from_config=None):
        """Decorate ``__init__`` of a class with a ``from_config`` classmethod (or a function with
        ``from_config=``) so that it accepts ``cfg`` as its first argument."""
        if init_func is not None:
            if not (inspect.isfunction(init_func) and init_func.__name__ == "__init__"):
                raise TypeError("@configurable without arguments decorates only __init__")

            @functools.wraps(init_func)
            def wrapped_init(self, *args, **kwargs):
                if _called_with_cfg(*args, **kwargs):
                    from_config_func = getattr(type(self), "from_config", None)
                    if from_config_func is None:
                        raise AttributeError(f"{type(self).__name__} has no from_config classmethod")
                    init_func(self, **_get_args_from_config(from_config_func, *args, **kwargs))
                else:
                    init_func(self, *args, **kwargs)

            return wrapped_init

        def wrapper(orig_func):
            @functools.wraps(orig_func)
            def wrapped(*args, **kwargs):
                if _called_with_cfg(*args, **kwargs):
                    return orig_func(**_get_args_from_config(from_config, *args, **kwargs))
                return orig_func(*args, **kwargs)

            wrapped.from_config = from_config
            return wrapped

        return wrapper
