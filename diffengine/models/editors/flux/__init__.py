from diffengine.models.editors.flux.flux import Flux

__all__ = ["Flux"]
