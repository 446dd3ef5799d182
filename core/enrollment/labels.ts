// The labels that enroll a namespace and opt a pod out; Kubernetes labels as the rule reads them.
/** Namespace label value `enabled` enrolls the namespace; pod label value `disabled` opts the pod out. */
export const ENROLL_LABEL = 'ambit.dev/mode';
/** Istio's ambient label, honoured both ways so a namespace can move between Istio and Ambit without relabelling. */
export const ISTIO_DATAPLANE_LABEL = 'istio.io/dataplane-mode';

export type Labels = Readonly<Record<string, string>>;
