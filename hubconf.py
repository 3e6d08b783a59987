"""torch.hub entry points: every model of this project's registry, under its registry name.

    model = torch.hub.load("path/to/RMNet", "rmnet50x6_32", source="local")      # residual form, random init
    model = torch.hub.load("path/to/RMNet", "resnet20", source="local", stem="cifar", num_classes=10)
    model = torch.hub.load("path/to/RMNet", "rmrepvgg69", source="local", weights="rmrep_69.pth.tar")
    plain = rm.convert(model.eval())                                                # the plain (VGG-like) form

`num_classes`, `stem` (default: the model's first) and other keyword arguments (e.g. `widths=[...]`) go to
`models.create_model`. No pretrained weights are published, so `pretrained=True` is refused;
`weights=PATH` loads any file `artifacts.load` reads (this project's checkpoints and deploy artifacts, the
RMNet and RepVGG authors' files, torchvision's).
"""
import models as _models

dependencies = ["torch"]


def _entrypoint(name: str):
    def entry(pretrained: bool = False, weights: str | None = None, num_classes: int | None = None,
              stem: str | None = None, **kwargs):
        if pretrained:
            raise ValueError(f"no pretrained weights are published for {name}; pass weights=PATH to load a file")
        if weights is not None:
            import artifacts

            return artifacts.load(weights, name=name, num_classes=num_classes, stem=stem, kwargs=kwargs).model
        return _models.create_model(name, num_classes=num_classes or 1000, stem=stem or _models.model_stems(name)[0],
                                    **kwargs)

    entry.__name__ = entry.__qualname__ = name
    entry.__doc__ = (f"{name} ({_models.model_family(name)} family, stems: {', '.join(_models.model_stems(name))}): "
                     f"the residual model, randomly initialised or with weights=PATH.")
    return entry


for _name in _models.list_models():
    globals()[_name] = _entrypoint(_name)
