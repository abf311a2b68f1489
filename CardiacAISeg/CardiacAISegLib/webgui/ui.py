"""The page layout (Vuetify 3). Element ids are stable: the end-to-end tests use them."""

# The path fields' suggestion lists open beside their field (over the edge of the views), not
# under it. Under it a list covered the fields and buttons below - Open among them - and stayed
# open after a path was typed (or Enter pressed): the click meant for Open picked a suggestion
# instead, and another study than the one typed was chosen, or the click was lost (probe 98).
# Beside the field the list still sits next to what is typed, and hides no control of the drawer,
# so Open always opens the path the field shows.
SUGGESTIONS_BESIDE = ("{location: 'end top'}",)
# the fields Open reads, sent with its click: read from the server's copy, a path typed just
# before the click could be opened as its first letters (as Save's fields; probe 63)
OPEN_FIELDS = ("study_path", "labels_path", "aif_path", "dt_text", "kind_choice", "rest_path", "rest_aif_path",
               "rest_dt_text", "rest_labels_path", "label_convention")


def build(app):
    from trame.widgets import html, vuetify3 as v
    from trame_vuetify.ui.vuetify3 import SinglePageWithDrawerLayout

    ctrl = app.ctrl
    with SinglePageWithDrawerLayout(app.server, width=390) as layout:
        layout.title.set_text("CardiacAISeg")
        with layout.toolbar:
            html.Div("{{ study ? study.name + ' - ' + study.kind + ', ' + study.frames + ' frame(s), ' + study.slices + ' slices, ' + study.spacing : 'no study open' }}",
                     id="study-line", classes="text-body-2 ml-4")
            v.VSpacer()
            html.Div("data folder: {{ data_root }}", classes="text-caption mr-4", id="data-root")

        with layout.drawer:
            _study_card(v, html, ctrl)
            _run_card(v, html, ctrl)
            _view_card(v, html, ctrl)
            _correct_card(v, html, ctrl)
            _save_card(v, html, ctrl)

        with layout.content:
            with html.Div(classes="pa-2", style="display: flex; flex-direction: column; gap: 6px;"):
                v.VAlert(id="error-alert", v_if="error_message", type="error", density="compact", closable=True,
                         text=("error_message",), click_close=ctrl.dismiss)
                v.VAlert(id="info-alert", v_if="info_message && !error_message", type="info", density="compact",
                         variant="tonal", text=("info_message",))
                with html.Div(id="views", style="height: 54vh; min-height: 320px; width: 100%; display: flex;"):
                    app.views.initialize_grid(layout)
                html.Div("{{ handle_xy }}", id="handle-xy", style="display: none;")
                with html.Div(style="display: flex; flex-direction: row; gap: 12px; align-items: flex-start;"):
                    with html.Div(style="flex: 1 1 auto; max-height: 34vh; overflow-y: auto;"):
                        html.Div("Run the segmentation to see the results.", v_if="!has_results", classes="text-medium-emphasis pa-2")
                        _qc_panel(v, html)
                        with html.Table(id="results-table", v_if="has_results", classes="text-body-2", style="border-collapse: collapse; width: 100%;"):
                            with html.Tr():
                                html.Th("Measure", style="text-align: left;")
                                html.Th("Value", style="text-align: right;")
                                html.Th("Unit", style="text-align: left; padding-left: 6px;")
                            with html.Tr(v_for="r in results_rows", key="r.measure",
                                         __properties=[("data_measure", "data-measure"), ("data_value", "data-value")],
                                         data_measure=("r.measure",), data_value=("r.value === null ? '' : r.value",)):
                                html.Td("{{ r.measure }}")
                                html.Td("{{ r.text }}", style="text-align: right;")
                                html.Td("{{ r.unit }}", style="padding-left: 6px;")
                        with html.Ul(id="warnings", v_if="warnings.length", classes="text-caption text-warning mt-1"):
                            html.Li("{{ w }}", v_for="w in warnings", key="w")
                    with html.Div(style="flex: 0 0 auto;"):
                        with v.VBtnToggle(id="bullseye-measure", v_if="bullseye_choice", v_model=("bullseye_measure",),
                                          mandatory=True, density="compact", divided=True, variant="outlined", color="primary"):
                            # perfusion: MBF, or the relative upslope (needs no AIF calibration)
                            v.VBtn("MBF", id="bullseye-mbf", value="mbf", size="x-small")
                            v.VBtn("Relative upslope", id="bullseye-upslope", value="relative_upslope", size="x-small")
                        html.Div("{{ bullseye_title }}", id="bullseye-title", v_if="bullseye_src", classes="text-caption")
                        html.Img(id="bullseye", v_if="bullseye_src", src=("bullseye_src",), style="width: 320px;")
                        v.VCheckbox(id="bullseye-fit", v_if="bullseye_src", label="Fit the colour scale to the data",
                                    v_model=("bullseye_fit",), density="compact", hide_details=True)
            _discard_dialog(v, ctrl)
    return layout


def _discard_dialog(v, ctrl):
    """'Discard the edits of <study>?' before an action that would drop corrections not saved
    (app.py ``_unless_edits_would_go``): Discard goes on, Cancel leaves everything as it was."""
    with v.VDialog(v_model=("discard_dialog",), persistent=True, max_width=520):
        with v.VCard(id="discard-dialog"):
            v.VCardTitle("{{ discard_question }}", id="discard-question", classes="text-wrap")
            v.VCardText("{{ discard_detail }}", id="discard-detail")
            with v.VCardActions():
                v.VSpacer()
                v.VBtn("Cancel", id="discard-cancel", click=ctrl.keep_edits, variant="text")
                v.VBtn("Discard", id="discard-confirm", click=ctrl.discard_edits, color="error", variant="flat")


def _qc_panel(v, html):
    """The analysis's quality check: a chip (pass, or review with the count) and its flags."""
    with html.Div(id="qc-panel", v_if="has_results && qc_status", classes="mb-1",
                  __properties=[("data_status", "data-status")], data_status=("qc_status",)):
        v.VChip("QC pass", id="qc-chip", v_if="qc_status === 'pass'", color="success", size="small", variant="flat",
                prepend_icon="mdi-check-circle")
        v.VChip("QC review: {{ qc_flags.filter(f => f.severity === 'review').length }} flag(s)", id="qc-chip",
                v_else=True, color="warning", size="small", variant="flat", prepend_icon="mdi-alert")
        with html.Ul(id="qc-flags", v_if="qc_flags.length", classes="text-caption mt-1", style="padding-left: 18px;"):
            with html.Li(v_for="f in qc_flags", key="f.code",
                         __properties=[("data_code", "data-code"), ("data_severity", "data-severity")],
                         data_code=("f.code",), data_severity=("f.severity",)):
                html.B("{{ f.code }}")
                html.Span(" ({{ f.severity }}): {{ f.message }}")


def _study_card(v, html, ctrl):
    open_fields = "[{" + ", ".join(f"{f}: {f}" for f in OPEN_FIELDS) + "}]"
    with v.VCard(title="Study", density="compact", classes="ma-2", variant="outlined"):
        with v.VCardText(classes="pt-0"):
            v.VSelect(id="sample-select", label="Shipped samples", items=("samples",), v_model=("sample_id",),
                      density="compact", hide_details=True)
            v.VBtn("Open sample", id="open-sample-btn", click=(ctrl.open_sample, "[sample_id]"), size="small", classes="mt-1",
                   disabled=("running || opening",))
            v.VDivider(classes="my-2")
            html.Div("Or a file or folder of the data folder:", classes="text-caption")
            v.VCombobox(id="study-path", label="Study (file or folder)", items=("data_files",), v_model=("study_path",),
                        density="compact", hide_details=True, clearable=True, menu_props=SUGGESTIONS_BESIDE)
            v.VCombobox(id="labels-path", label="Labels (optional: label map or contour folder)", items=("data_files",),
                        v_model=("labels_path",), density="compact", hide_details=True, clearable=True, classes="mt-1",
                        menu_props=SUGGESTIONS_BESIDE)
            # the label values of the label maps (the CLI's --label-convention; probe 96)
            v.VSelect(id="label-convention-select", label="Label values", items=("label_conventions",),
                      v_model=("label_convention",), density="compact", hide_details=True, classes="mt-1",
                      v_if="labels_path || rest_labels_path")
            # the readers decide the kind from the data; a user who knows better says so, as
            # --kind does (a cine stamped a second per phase was told "give --kind cine", and the
            # page had no such field; probe 88)
            v.VSelect(id="kind-select", label="Series kind", items=("kinds",), v_model=("kind_choice",),
                      density="compact", hide_details=True, classes="mt-1")
            with v.VExpansionPanels(classes="mt-1"):
                with v.VExpansionPanel(title="Perfusion: AIF, frame interval, rest series"):
                    with v.VExpansionPanelText():
                        v.VCombobox(id="aif-path", label="AIF file", items=("data_files",), v_model=("aif_path",),
                                    density="compact", hide_details=True, clearable=True, menu_props=SUGGESTIONS_BESIDE)
                        v.VTextField(id="dt-text", label="Frame interval (s)", v_model=("dt_text",), density="compact",
                                     hide_details=True, classes="mt-1")
                        v.VCombobox(id="rest-path", label="Rest series (optional: MPR and MPRI)", items=("data_files",),
                                    v_model=("rest_path",), density="compact", hide_details=True, clearable=True,
                                    classes="mt-1", menu_props=SUGGESTIONS_BESIDE)
                        v.VCombobox(id="rest-aif-path", label="Rest AIF file", items=("data_files",),
                                    v_model=("rest_aif_path",), density="compact", hide_details=True, clearable=True,
                                    classes="mt-1", menu_props=SUGGESTIONS_BESIDE)
                        v.VTextField(id="rest-dt-text", label="Rest frame interval (s)", v_model=("rest_dt_text",),
                                     density="compact", hide_details=True, classes="mt-1")
                        v.VCombobox(id="rest-labels-path", label="Rest labels", items=("data_files",),
                                    v_model=("rest_labels_path",), density="compact", hide_details=True, clearable=True,
                                    classes="mt-1", menu_props=SUGGESTIONS_BESIDE)
            # the perfusion fields apply to the next Open though their panel is folded away: said
            # here (an AIF file kept from a perfusion study made the next cine perfusion; probe 92)
            html.Div("Perfusion fields filled: {{ [aif_path && 'AIF file ' + aif_path, dt_text && 'frame interval ' + "
                     "dt_text + ' s', rest_path && 'rest series ' + rest_path, rest_aif_path && 'rest AIF file ' + "
                     "rest_aif_path, rest_dt_text && 'rest frame interval ' + rest_dt_text + ' s', rest_labels_path && "
                     "'rest labels ' + rest_labels_path].filter(Boolean).join('; ') }}", id="perfusion-fields-filled",
                     v_if="aif_path || dt_text || rest_path || rest_aif_path || rest_dt_text || rest_labels_path",
                     classes="text-caption mt-1")
            with html.Div(classes="d-flex mt-1", style="gap: 6px;"):
                # the fields' values go with the click, as Save's do (probe 63)
                v.VBtn("Open", id="open-btn", click=(ctrl.open_study, open_fields),
                       size="small", color="primary",
                       disabled=("running || opening",))
                v.VBtn("Refresh list", id="refresh-files-btn", click=ctrl.refresh_files, size="small", variant="text")
            html.Div("list truncated: type the path", v_if="data_truncated", classes="text-caption")
            html.Div("{{ data_collapsed }} folder(s) of many files listed as the folder: open the folder, or type a "
                     "file of it", v_if="data_collapsed", id="data-collapsed", classes="text-caption")
            v.VProgressLinear(id="opening-progress", v_if="opening", indeterminate=True, height=4, classes="mt-1",
                              color="primary")


def _run_card(v, html, ctrl):
    with v.VCard(title="Segment", density="compact", classes="ma-2", variant="outlined"):
        with v.VCardText(classes="pt-0"):
            v.VSelect(id="model-select", label="Model", items=("models",), v_model=("model",), density="compact",
                      hide_details=True, no_data_text="no network installed for this series")
            html.Div("{{ model_summary }}", classes="text-caption", id="model-summary")
            with html.Div(classes="d-flex mt-1", style="gap: 6px;"):
                v.VBtn("Run", id="run-btn", click=ctrl.run, color="primary", size="small",
                       disabled=("running || stopping || opening || !study_loaded",))
                v.VBtn("Cancel", id="cancel-btn", click=ctrl.cancel, size="small", disabled=("!running",))
            v.VProgressLinear(id="run-progress", model_value=("progress",), height=6, classes="mt-2",
                              color="primary", indeterminate=("running && progress === 0",))
            html.Div("{{ progress_text }}", classes="text-caption", id="progress-text")


def _view_card(v, html, ctrl):
    with v.VCard(title="View", density="compact", classes="ma-2", variant="outlined", disabled=("!study_loaded",)):
        with v.VCardText(classes="pt-0"):
            with html.Div(classes="d-flex align-center", style="gap: 4px;"):
                # Frames count from 1 for people (the state and the files keep 0-based indices).
                html.Span("Frame {{ frame + 1 }} / {{ n_frames }} {{ frame_tag }}", id="frame-label", classes="text-body-2",
                          style="min-width: 110px;")
                v.VBtn("<", id="frame-prev", click=(ctrl.step_frame, "[-1]"), size="x-small")
                v.VBtn(">", id="frame-next", click=(ctrl.step_frame, "[1]"), size="x-small")
                v.VBtn("ED", id="frame-ed", click=(ctrl.goto_frame_tag, "['ed']"), size="x-small", variant="tonal")
                v.VBtn("ES", id="frame-es", click=(ctrl.goto_frame_tag, "['es']"), size="x-small", variant="tonal")
                v.VBtn("{{ playing ? 'Pause' : 'Play' }}", id="frame-play", click=ctrl.toggle_play, size="x-small",
                       variant="tonal", color=("playing ? 'primary' : undefined",), disabled=("n_frames < 2",))
            v.VSlider(id="frame-slider", v_model_number=("frame",), min=0, max=("n_frames - 1",), step=1,
                      density="compact", hide_details=True)
            with html.Div(classes="d-flex align-center", style="gap: 4px;"):
                html.Span("Slice {{ slice }} / {{ n_slices - 1 }}", id="slice-label", classes="text-body-2", style="min-width: 86px;")
                v.VBtn("<", id="slice-prev", click=(ctrl.step_slice, "[-1]"), size="x-small")
                v.VBtn(">", id="slice-next", click=(ctrl.step_slice, "[1]"), size="x-small")
            v.VSlider(id="slice-slider", v_model_number=("slice",), min=0, max=("n_slices - 1",), step=1,
                      density="compact", hide_details=True)
            with html.Div(classes="d-flex align-center", style="gap: 4px;"):
                html.Span("Zoom", classes="text-body-2", style="min-width: 86px;")
                v.VBtn("Heart", id="zoom-heart", click=ctrl.zoom_heart, size="x-small", variant="tonal",
                       disabled=("!has_results",))
                v.VBtn("Whole image", id="zoom-all", click=ctrl.zoom_all, size="x-small", variant="tonal")
            html.Div("Mouse wheel over the slice view: next/previous slice; Ctrl+wheel or right-drag: zoom",
                     classes="text-caption text-medium-emphasis")
            with html.Div(classes="d-flex align-center", style="gap: 4px;"):
                html.Span("Orientation", classes="text-body-2", style="min-width: 86px;")
                v.VBtn("Turn 90\u00b0", id="view-turn", click=ctrl.turn_view, size="x-small", variant="tonal")
                v.VBtn("Mirror", id="view-mirror", click=ctrl.mirror_view, size="x-small", variant="tonal",
                       color=("view_mirrored ? 'primary' : undefined",))
                v.VBtn("Default", id="view-reset", click=ctrl.reset_view, size="x-small", variant="tonal",
                       disabled=("!view_turns && !view_mirrored",))
            html.Div("By default RV left, anterior up (from the insertion points, else the file's geometry); "
                     "turning or mirroring changes the picture only", classes="text-caption text-medium-emphasis")
            with html.Div(classes="d-flex", style="gap: 12px;"):
                v.VCheckbox(id="contour-fill", label="Fill the contours", v_model=("contour_fill",), density="compact",
                            hide_details=True)
                v.VCheckbox(id="show-3d", label="3D view", v_model=("show_3d",), density="compact", hide_details=True)
            with html.Div(classes="d-flex align-center", style="gap: 4px;"):
                html.Span("Window", classes="text-body-2", style="min-width: 86px;")
                with v.VBtnToggle(v_model=("wl_preset",), density="compact", divided=True, variant="outlined",
                                  color="primary"):
                    v.VBtn("Auto", id="wl-auto", value="auto", size="x-small")
                    v.VBtn("Full", id="wl-full", value="full", size="x-small")
                    v.VBtn("Contrast", id="wl-contrast", value="contrast", size="x-small")
            with html.Div(id="wl-slider"):       # (an id on the slider lands on its inputs)
                v.VRangeSlider(v_model=("wl_range",), min=("wl_bounds[0]",), max=("wl_bounds[1]",),
                               step=("wl_step",), density="compact", hide_details=True, strict=True)


def _correct_card(v, html, ctrl):
    from .session import ROTATE_STEP_DEG as step

    with v.VCard(title="Correct", density="compact", classes="ma-2", variant="outlined", disabled=("!has_results || running",)):
        with v.VCardText(classes="pt-0"):
            html.Div("RV insertion handles (drag them in the slice view, or turn them here):", classes="text-caption")
            html.Div("{{ handle_text }}", id="handle-text", classes="text-body-2")
            with html.Div(classes="d-flex", style="gap: 4px;", v_if="can_place || placing"):
                v.VBtn("Place insertion points", id="place-handles", click=ctrl.place_handles, size="x-small", color="primary",
                       disabled=("!!placing",))
                v.VBtn("Cancel placing", id="place-cancel", v_if="placing", click=ctrl.cancel_placing, size="x-small",
                       variant="text")
            html.Div("Click the {{ placing }} RV insertion point in the slice view", v_if="placing", id="placing-text",
                     classes="text-caption text-primary")
            with html.Div(classes="d-flex flex-wrap", style="gap: 4px;"):
                for side, short in (("anterior", "ant"), ("inferior", "inf")):
                    v.VBtn(f"{short} -{step:.0f}", id=f"{short}-minus", click=(ctrl.rotate, f"['{side}', {-step}]"),
                           size="x-small", disabled=("!has_handles",))
                    v.VBtn(f"{short} +{step:.0f}", id=f"{short}-plus", click=(ctrl.rotate, f"['{side}', {step}]"),
                           size="x-small", disabled=("!has_handles",))
            v.VDivider(classes="my-2")
            with v.VBtnToggle(v_model=("edit_segment",), density="compact", mandatory=True, divided=True,
                              variant="outlined", color="primary"):
                for key, title in (("lv", "LV blood pool"), ("myo", "Myocardium"), ("rv", "RV")):
                    v.VBtn(title, id=f"seg-{key}", value=key, size="small")
            with v.VBtnToggle(v_model=("tool",), density="compact", mandatory=True, classes="mt-1", divided=True,
                              variant="outlined", color="primary"):
                v.VBtn("Navigate", id="tool-none", value="none", size="small")
                v.VBtn("Paint", id="tool-paint", value="paint", size="small")
                v.VBtn("Erase", id="tool-erase", value="erase", size="small")
            v.VSlider(id="brush-slider", label="Brush (mm)", v_model_number=("brush_mm",), min=2, max=30, step=1,
                      density="compact", hide_details=True, thumb_label=True)
            with html.Div(classes="d-flex", style="gap: 4px;"):
                v.VBtn("Grow 1 px", id="grow-btn", click=(ctrl.morph, "[1]"), size="x-small")
                v.VBtn("Shrink 1 px", id="shrink-btn", click=(ctrl.morph, "[-1]"), size="x-small")
                v.VBtn("Revert", id="revert-btn", click=ctrl.revert, size="x-small", variant="text")
            html.Div("{{ edit_frame_text }}", id="edit-frame-text", classes="text-caption")


def _save_card(v, html, ctrl):
    with v.VCard(title="Save", density="compact", classes="ma-2", variant="outlined", disabled=("!has_results || running",)):
        with v.VCardText(classes="pt-0"):
            v.VTextField(id="out-path", label="Output folder (in the data folder)", v_model=("out_path",), density="compact",
                         hide_details=True)
            v.VTextField(id="patient-name", label="Ground-truth name (patientNNN)", v_model=("patient",), density="compact",
                         hide_details=True, classes="mt-1")
            v.VCheckbox(id="overwrite", label="Overwrite existing files", v_model=("overwrite",), density="compact",
                        hide_details=True)
            # the fields' values go with the click: read from the server's copy, a folder typed
            # just before the click could be saved under its first letters (probe 63)
            v.VBtn("Save", id="save-btn", click=(ctrl.save, "[out_path, patient, overwrite]"), color="primary",
                   size="small")
            with html.Ul(id="saved-files", v_if="saved_files.length", classes="text-caption mt-1"):
                html.Li("{{ f }}", v_for="f in saved_files", key="f")
