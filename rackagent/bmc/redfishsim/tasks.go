package redfishsim

import (
	"net/http"
	"time"
)

// An asynchronous reset (DSP0266 "Asynchronous operations"): the POST
// answers 202 Accepted with a task monitor in Location; the monitor
// answers 202 while the task runs and, once it is done, the operation's
// own response (204, or its error). The Task resource in the TaskService
// shows TaskState, TaskStatus and Messages.

type task struct {
	id        string
	sys       *system
	resetType string
	polls     int
	finishing bool   // a poll is performing the reset
	state     string // TaskState: Running, Completed, Exception
	status    string // TaskStatus: OK, Critical
	message   string // why it failed
	start     time.Time
	end       time.Time
}

func (t *task) path() string    { return root + "/TaskService/Tasks/" + t.id }
func (t *task) monitor() string { return root + "/TaskService/TaskMonitors/" + t.id }

// body is the Task resource; the caller holds s.mu.
func (t *task) body() obj {
	m := obj{
		"@odata.id":   t.path(),
		"@odata.type": "#Task.v1_7_4.Task",
		"Id":          t.id,
		"Name":        "ComputerSystem.Reset " + t.resetType,
		"TaskState":   t.state,
		"TaskStatus":  t.status,
		"StartTime":   t.start.UTC().Format(time.RFC3339),
		"TaskMonitor": t.monitor(),
		"Payload": obj{
			"HttpOperation": "POST",
			"TargetUri":     t.sys.path() + "/Actions/ComputerSystem.Reset",
			"JsonBody":      `{"ResetType":"` + t.resetType + `"}`,
		},
		"Messages": []obj{},
	}
	if t.state == "Running" {
		m["PercentComplete"] = 0
	} else {
		m["PercentComplete"] = 100
		m["EndTime"] = t.end.UTC().Format(time.RFC3339)
	}
	if t.message != "" {
		m["Messages"] = []obj{{
			"@odata.type":     "#Message.v1_1_1.Message",
			"MessageId":       "Base.1.15.GeneralError",
			"Message":         t.message,
			"MessageSeverity": "Critical",
		}}
	}
	return m
}

func (s *Server) routeTasks(w http.ResponseWriter, r *http.Request, segs []string) {
	if !allow(w, r, http.MethodGet) {
		return
	}
	switch {
	case len(segs) == 0:
		writeResource(w, http.StatusOK, obj{
			"@odata.id":                       root + "/TaskService",
			"@odata.type":                     "#TaskService.v1_2_0.TaskService",
			"Id":                              "TaskService",
			"Name":                            "Task Service",
			"ServiceEnabled":                  true,
			"CompletedTaskOverWritePolicy":    "Oldest",
			"LifeCycleEventOnTaskStateChange": false,
			"Tasks":                           ref(root + "/TaskService/Tasks"),
		})
	case len(segs) == 1 && segs[0] == "Tasks":
		s.mu.Lock()
		var members []string
		for _, t := range s.tasks {
			members = append(members, t.path())
		}
		s.mu.Unlock()
		writeResource(w, http.StatusOK, collection(root+"/TaskService/Tasks", "#TaskCollection.TaskCollection", "Task Collection", members))
	case len(segs) == 2 && segs[0] == "Tasks":
		s.mu.Lock()
		t := s.tasks[segs[1]]
		var body obj
		if t != nil {
			body = t.body()
		}
		s.mu.Unlock()
		if t == nil {
			notFound(w, r)
			return
		}
		writeResource(w, http.StatusOK, body)
	case len(segs) == 2 && segs[0] == "TaskMonitors":
		s.pollMonitor(w, r, segs[1])
	default:
		notFound(w, r)
	}
}

// pollMonitor answers a task monitor: 202 with the Task while it runs;
// at the AsyncPolls-th poll the reset acts and the monitor answers its
// result from then on.
func (s *Server) pollMonitor(w http.ResponseWriter, r *http.Request, id string) {
	s.mu.Lock()
	s.stats.TaskPolls++
	t := s.tasks[id]
	finish := false
	if t != nil && t.state == "Running" && !t.finishing {
		t.polls++
		if t.polls >= s.opts.AsyncPolls {
			t.finishing = true
			finish = true
		}
	}
	s.mu.Unlock()
	if t == nil {
		notFound(w, r)
		return
	}
	if finish {
		var err error
		if s.opts.AsyncFail != "" {
			err = errString(s.opts.AsyncFail)
		} else {
			err = s.act(t.sys, t.resetType)
		}
		s.mu.Lock()
		t.finishing = false
		t.end = time.Now()
		if err != nil {
			t.state, t.status, t.message = "Exception", "Critical", err.Error()
		} else {
			t.state = "Completed"
		}
		s.mu.Unlock()
	}
	s.mu.Lock()
	state, message, body := t.state, t.message, t.body()
	s.mu.Unlock()
	switch state {
	case "Running":
		w.Header().Set("Location", t.monitor())
		writeResource(w, http.StatusAccepted, body)
	case "Completed":
		w.WriteHeader(http.StatusNoContent)
	default:
		writeError(w, http.StatusConflict, "GeneralError", "The reset could not be performed: "+message)
	}
}

type errString string

func (e errString) Error() string { return string(e) }
